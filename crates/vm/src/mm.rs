//! The address space: VMAs in an RCU-safe maple tree, behind the mmap lock.
//!
//! # Owns
//! [`AddressSpace`]: its RCU domain, its VMA tree and its mmap lock.
//!
//! # Invariants
//! - A1. The tree holds non-overlapping VMAs keyed by `[start, end)`; each
//!   value is an immutable `Vma` (vma.rs V1). Writers hold the mmap lock
//!   (then the tree's own write lock); readers hold only an RCU guard.
//! - A2. Every reader sees each VMA whole: a line of `maps()` is a real state
//!   of one VMA at some moment of the read, lines never overlap and never go
//!   backwards (the tree's iteration resumes by address), and a VMA that
//!   exists for the whole read is shown.
//!
//! # Concurrency
//! `maps`, `query`, `vmas`: RCU read side, lock-free. Building
//! (`from_maps`) and every mm call: mmap write lock.
//!
//! # Linux
//! `struct mm_struct` (`mm_mt`, `mmap_lock`, `map_count`); lock-free
//! `/proc/pid/maps` reading as in Linux 6.17.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use rcuvm_maple::{Entry, MapleTree};
use rcuvm_rcu::Domain;

use crate::maps::{self, MapsError};
use crate::mmap::{MapFile, MmCall, MmConfig};
use crate::uapi::{Errno, MapFlags, Prot};
use crate::vma::{Backing, VmFlags, Vma};

/// A process's address space.
///
/// **Status:** storage, snapshots, readers, `mmap`, `munmap`,
/// `mprotect`, `mremap`, `brk`, `mlock` and the flag advices of `madvise`
/// are built (see the issue "the address space with Linux's exact mm
/// semantics").
pub struct AddressSpace {
    domain: Arc<Domain>,
    vmas: MapleTree<Vma>,
    cfg: MmConfig,
    layout: Layout,
    /// The mmap lock (write side; readers never take it), with what only
    /// writers touch.
    mmap_lock: Mutex<MmState>,
}

/// State behind the mmap lock.
#[derive(Debug)]
struct MmState {
    next_shmem_ino: u64,
    /// `mm->def_flags` (mlock.rs L4).
    def_flags: VmFlags,
}

/// `start_brk`, `brk` and `start_stack`: written under the mmap lock, read
/// by maps readers without it (as Linux's `show_map_vma` reads `mm->brk`),
/// to name `[heap]` and `[stack]`. Zero: none.
#[derive(Debug, Default)]
pub(crate) struct Layout {
    pub(crate) start_brk: AtomicU64,
    pub(crate) brk: AtomicU64,
    pub(crate) start_stack: AtomicU64,
}

impl Layout {
    /// The name Linux derives for an anonymous VMA without one:
    /// `vma_is_initial_heap()`, then `vma_is_initial_stack()`.
    fn derived_name(&self, v: &Vma) -> Option<&'static str> {
        let (sb, b) = (self.start_brk.load(Ordering::Relaxed), self.brk.load(Ordering::Relaxed));
        let st = self.start_stack.load(Ordering::Relaxed);
        if sb != 0 && v.start <= b && v.end >= sb {
            Some("[heap]")
        } else if st != 0 && v.start <= st && v.end >= st {
            Some("[stack]")
        } else {
            None
        }
    }
}

impl std::fmt::Debug for AddressSpace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AddressSpace").field("map_count", &self.map_count()).finish_non_exhaustive()
    }
}

impl Default for AddressSpace {
    fn default() -> Self {
        Self::new()
    }
}

impl AddressSpace {
    /// An empty address space with its own RCU domain.
    pub fn new() -> Self {
        Self::with_config(MmConfig::default())
    }

    /// An empty address space with the given tunables.
    pub fn with_config(cfg: MmConfig) -> Self {
        let domain = Arc::new(Domain::new());
        AddressSpace {
            vmas: MapleTree::new(domain.clone()),
            domain,
            cfg,
            layout: Layout::default(),
            mmap_lock: Mutex::new(MmState { next_shmem_ino: 0x10_0000, def_flags: VmFlags::empty() }),
        }
    }

    /// The tunables.
    pub fn config(&self) -> &MmConfig {
        &self.cfg
    }

    fn call<R>(&self, f: impl FnOnce(&mut MmCall<'_>) -> R) -> R {
        let mut lock = self.mmap_lock.lock().unwrap_or_else(|e| e.into_inner());
        let st = &mut *lock;
        let mut c = MmCall {
            w: self.vmas.write(),
            cfg: &self.cfg,
            layout: &self.layout,
            next_shmem_ino: &mut st.next_shmem_ino,
            def_flags: &mut st.def_flags,
        };
        f(&mut c)
    }

    /// `mmap(2)`: returns the address mapped, or Linux's errno with the
    /// address space unchanged. `file` is ignored with `MAP_ANONYMOUS`;
    /// without it and without a file the mapping is anonymous.
    ///
    /// # Errors
    /// `EINVAL`, `ENOMEM`, `EEXIST`, `EACCES`, `EOVERFLOW` as Linux returns them.
    pub fn mmap(
        &self,
        addr: u64,
        len: u64,
        prot: Prot,
        flags: MapFlags,
        file: Option<&MapFile>,
        offset: u64,
    ) -> Result<u64, Errno> {
        self.call(|c| c.mmap(addr, len, prot, flags, file, offset))
    }

    /// `mprotect(2)`: changes VMAs in order and stops with `ENOMEM` at a
    /// hole, keeping the changes made before it, as Linux does.
    ///
    /// # Errors
    /// `EINVAL`, `ENOMEM`, `EACCES` as Linux returns them.
    pub fn mprotect(&self, addr: u64, len: u64, prot: Prot) -> Result<(), Errno> {
        self.call(|c| c.mprotect(addr, len, prot))
    }

    /// `madvise(2)`: advices that change `vm_flags` split and merge VMAs;
    /// holes give `ENOMEM` after the rest of the range was advised.
    ///
    /// # Errors
    /// `EINVAL`, `ENOMEM` as Linux returns them; `ENOSYS` for advices rcuvm
    /// does not model yet (see madvise.rs).
    pub fn madvise(&self, addr: u64, len: u64, advice: i32) -> Result<(), Errno> {
        self.call(|c| c.madvise(addr, len, advice))
    }

    /// `brk(2)`: moves the program break; returns the new break, or the
    /// old one when the move is refused (Linux's brk never fails with an
    /// errno).
    pub fn brk(&self, addr: u64) -> u64 {
        self.call(|c| c.brk(addr))
    }

    /// The current program break and its start (`mm->brk`, `mm->start_brk`).
    pub fn brk_range(&self) -> (u64, u64) {
        (self.layout.start_brk.load(Ordering::Relaxed), self.layout.brk.load(Ordering::Relaxed))
    }

    /// Sets where the heap starts (what the ELF loader does): `brk` starts
    /// there too. Only before the first `brk` call.
    pub fn set_start_brk(&self, addr: u64) {
        let _lock = self.mmap_lock.lock().unwrap_or_else(|e| e.into_inner());
        self.layout.start_brk.store(addr, Ordering::Relaxed);
        self.layout.brk.store(addr, Ordering::Relaxed);
    }

    /// `mremap(2)`; `new_addr` is used with `MREMAP_FIXED` (flags as in
    /// [`uapi`](crate::uapi)'s `MREMAP_*`).
    ///
    /// # Errors
    /// `EINVAL`, `EFAULT`, `ENOMEM` as Linux returns them.
    pub fn mremap(
        &self,
        addr: u64,
        old_len: u64,
        new_len: u64,
        flags: u32,
        new_addr: u64,
    ) -> Result<u64, Errno> {
        self.call(|c| c.mremap(addr, old_len, new_len, flags, new_addr))
    }

    /// `munmap(2)`.
    ///
    /// # Errors
    /// `EINVAL` for a misaligned, empty or out-of-range request; `ENOMEM`
    /// when punching a hole would pass `max_map_count`.
    pub fn munmap(&self, addr: u64, len: u64) -> Result<(), Errno> {
        self.call(|c| c.munmap(addr, len))
    }

    /// `mlock(2)`: locks the VMAs over `[addr, addr + len)` (`addr` rounded
    /// down to its page), splitting and merging them; stops with `ENOMEM` at
    /// a hole, keeping what it locked before it, as Linux does.
    ///
    /// # Errors
    /// `EINVAL` when the range wraps; `ENOMEM` for a hole, a split past
    /// `max_map_count`, or a VMA that cannot be faulted in (`PROT_NONE`),
    /// after locking it (see mlock.rs).
    pub fn mlock(&self, addr: u64, len: u64) -> Result<(), Errno> {
        self.call(|c| c.mlock(addr, len, VmFlags::LOCKED))
    }

    /// `mlock2(2)`: `mlock` with `MLOCK_ONFAULT` (`VM_LOCKONFAULT`: no page
    /// is faulted in, so `PROT_NONE` memory locks without error).
    ///
    /// # Errors
    /// `EINVAL` for a flag other than [`MLOCK_ONFAULT`](crate::uapi::MLOCK_ONFAULT),
    /// then as [`mlock`](Self::mlock).
    pub fn mlock2(&self, addr: u64, len: u64, flags: u32) -> Result<(), Errno> {
        self.call(|c| c.mlock2(addr, len, flags))
    }

    /// `munlock(2)`: clears `VM_LOCKED` and `VM_LOCKONFAULT` over the range.
    ///
    /// # Errors
    /// `EINVAL` when the range wraps; `ENOMEM` for a hole or a split past
    /// `max_map_count`.
    pub fn munlock(&self, addr: u64, len: u64) -> Result<(), Errno> {
        self.call(|c| c.munlock(addr, len))
    }

    /// `mlockall(2)` with `MCL_CURRENT`, `MCL_FUTURE` and `MCL_ONFAULT`
    /// ([`uapi`](crate::uapi)).
    ///
    /// # Errors
    /// `EINVAL` for no flag, an unknown flag, or `MCL_ONFAULT` alone.
    pub fn mlockall(&self, flags: u32) -> Result<(), Errno> {
        self.call(|c| c.mlockall(flags))
    }

    /// `munlockall(2)`: unlocks every VMA and clears `MCL_FUTURE`.
    pub fn munlockall(&self) {
        self.call(|c| c.munlockall());
    }

    /// An address space holding the VMAs of a `/proc/pid/maps` snapshot;
    /// `source` names the snapshot in errors.
    ///
    /// # Errors
    /// The first malformed line, with its number (maps.rs M2).
    pub fn from_maps(text: &str, source: &str) -> Result<Self, MapsError> {
        let mut vmas = maps::parse(text, source)?;
        let mm = AddressSpace::new();
        // `[heap]` and `[stack]` are derived from brk and start_stack, not
        // stored (mm.rs Layout): recover those and drop the names.
        let heap: Vec<(u64, u64)> =
            vmas.iter().filter(|v| v.name.as_deref() == Some("[heap]")).map(|v| (v.start, v.end)).collect();
        if let (Some(first), Some(last)) = (heap.first(), heap.last()) {
            mm.layout.start_brk.store(last.0.max(first.0), Ordering::Relaxed);
            mm.layout.brk.store(last.1, Ordering::Relaxed);
        }
        if let Some(st) = vmas.iter().find(|v| v.name.as_deref() == Some("[stack]")) {
            mm.layout.start_stack.store(st.end - 8, Ordering::Relaxed);
        }
        for v in &mut vmas {
            if matches!(v.name.as_deref(), Some("[heap]" | "[stack]")) {
                v.name = None;
            }
        }
        {
            let _lock = mm.mmap_lock.lock().unwrap_or_else(|e| e.into_inner());
            let mut w = mm.vmas.write();
            for v in vmas {
                // `parse` rejected overlaps, so this cannot fail.
                w.insert(v.start..v.end, v).expect("parse() checked that lines do not overlap");
            }
        }
        Ok(mm)
    }

    /// The RCU domain readers of this address space use.
    pub fn domain(&self) -> &Arc<Domain> {
        &self.domain
    }

    /// Number of VMAs (`map_count`).
    pub fn map_count(&self) -> usize {
        self.vmas.len()
    }

    /// `/proc/pid/maps`, read under RCU without the mmap lock (A2).
    pub fn maps(&self) -> String {
        let g = self.domain.read();
        let mut out = String::new();
        for e in self.vmas.iter_from(0, &g) {
            let _ = writeln!(out, "{}", maps::render_line(&view(&e, &self.layout)));
        }
        out
    }

    /// The VMA containing `addr`, like `PROCMAP_QUERY` without flags.
    pub fn query(&self, addr: u64) -> Option<Arc<Vma>> {
        let g = self.domain.read();
        self.vmas.load(addr, &g).map(|e| Arc::new(view(&e, &self.layout)))
    }

    /// A snapshot of every VMA, in address order.
    pub fn vmas(&self) -> Vec<Arc<Vma>> {
        let g = self.domain.read();
        self.vmas.iter_from(0, &g).map(|e| Arc::new(view(&e, &self.layout))).collect()
    }
}

/// A VMA as a reader sees it: while a writer replaces a VMA by slices
/// (mmap.rs P2), the tree may briefly hold the old VMA over part of its old
/// range; its line is that part, a real state of the VMA. Anonymous VMAs
/// without a name get `[heap]`/`[stack]` as Linux derives them.
fn view(e: &Entry<'_, Vma>, layout: &Layout) -> Vma {
    let v = e.value;
    let mut out = if v.start == e.range.start && v.end == e.range.end {
        v.clone()
    } else {
        Vma { start: e.range.start, end: e.range.end, pgoff: v.pgoff_at(e.range.start), ..v.clone() }
    };
    if out.name.is_none() && out.backing == Backing::Anon {
        out.name = layout.derived_name(&out).map(Arc::from);
    }
    out
}
