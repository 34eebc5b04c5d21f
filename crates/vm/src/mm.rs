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
use std::sync::{Arc, Mutex};

use rcuvm_maple::{Entry, MapleTree};
use rcuvm_rcu::Domain;

use crate::maps::{self, MapsError};
use crate::mmap::{MapFile, MmCall, MmConfig};
use crate::uapi::{Errno, MapFlags, Prot};
use crate::vma::Vma;

/// A process's address space.
///
/// **Status:** storage, snapshots, readers, `mmap`, `munmap` and
/// `mprotect` and the flag advices of `madvise` are built; `mremap`, `brk`
/// and `mlock` are not yet (see the
/// issue "the address space with Linux's exact mm semantics").
pub struct AddressSpace {
    domain: Arc<Domain>,
    vmas: MapleTree<Vma>,
    cfg: MmConfig,
    /// The mmap lock (write side; readers never take it), with what only
    /// writers touch.
    mmap_lock: Mutex<MmState>,
}

/// State behind the mmap lock.
#[derive(Debug, Default)]
struct MmState {
    next_shmem_ino: u64,
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
            mmap_lock: Mutex::new(MmState { next_shmem_ino: 0x10_0000 }),
        }
    }

    /// The tunables.
    pub fn config(&self) -> &MmConfig {
        &self.cfg
    }

    fn call<R>(&self, f: impl FnOnce(&mut MmCall<'_>) -> R) -> R {
        let mut st = self.mmap_lock.lock().unwrap_or_else(|e| e.into_inner());
        let mut c = MmCall { w: self.vmas.write(), cfg: &self.cfg, next_shmem_ino: &mut st.next_shmem_ino };
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

    /// `munmap(2)`.
    ///
    /// # Errors
    /// `EINVAL` for a misaligned, empty or out-of-range request; `ENOMEM`
    /// when punching a hole would pass `max_map_count`.
    pub fn munmap(&self, addr: u64, len: u64) -> Result<(), Errno> {
        self.call(|c| c.munmap(addr, len))
    }

    /// An address space holding the VMAs of a `/proc/pid/maps` snapshot;
    /// `source` names the snapshot in errors.
    ///
    /// # Errors
    /// The first malformed line, with its number (maps.rs M2).
    pub fn from_maps(text: &str, source: &str) -> Result<Self, MapsError> {
        let vmas = maps::parse(text, source)?;
        let mm = AddressSpace::new();
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
            let _ = writeln!(out, "{}", maps::render_line(&view(&e)));
        }
        out
    }

    /// The VMA containing `addr`, like `PROCMAP_QUERY` without flags.
    pub fn query(&self, addr: u64) -> Option<Arc<Vma>> {
        let g = self.domain.read();
        self.vmas.load(addr, &g).map(|e| Arc::new(view(&e)))
    }

    /// A snapshot of every VMA, in address order.
    pub fn vmas(&self) -> Vec<Arc<Vma>> {
        let g = self.domain.read();
        self.vmas.iter_from(0, &g).map(|e| Arc::new(view(&e))).collect()
    }
}

/// A VMA as a reader sees it: while a writer replaces a VMA by slices
/// (mmap.rs P2), the tree may briefly hold the old VMA over part of its old
/// range; its line is that part, a real state of the VMA.
fn view(e: &Entry<'_, Vma>) -> Vma {
    let v = e.value;
    if v.start == e.range.start && v.end == e.range.end {
        return v.clone();
    }
    Vma { start: e.range.start, end: e.range.end, pgoff: v.pgoff_at(e.range.start), ..v.clone() }
}
