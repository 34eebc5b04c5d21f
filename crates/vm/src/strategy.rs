//! The five ways to keep page faults and readers safe against mm calls,
//! from the linux-mm thread "synchronize_rcu in munmap?" (February 2021)
//! and what Linux shipped since.
//!
//! # Owns
//! [`Strategy`], the per-VMA lock protocol (`vma_start_read`,
//! `vma_start_write`) and `DeadEntry` (solution 3's dead entries).
//!
//! # Invariants
//! - S1. In every strategy, writers (mm calls) serialise on the mmap write
//!   lock, and a frame or table page is freed only after the TLB shootdown
//!   (tlb.rs T3).
//! - S2. `mmap-lock`: faults and smaps take the mmap lock for read; a
//!   writer excludes them all.
//! - S3. `vma-lock`: a fault finds the VMA under RCU and read-locks it
//!   (`vma_start_read`); a writer write-locks every VMA object it
//!   replaces, even by one tree store (a split, a merge, a growth, a new
//!   anon_vma or lock bits: VMAs are immutable, so a fault holding the old
//!   object would otherwise install PTEs for a VMA no longer in the tree),
//!   or removes (`vma_start_write`: it marks the VMA with the mm's
//!   `mm_lock_seq` and waits for its readers) before changing the tree; the
//!   marks all drop when the writer releases the mmap lock (`mm_lock_seq`
//!   moves on). A fault that cannot lock retries, then falls back to the
//!   mmap lock.
//! - S4. `rcu-sync`, `rcu-dead`: a fault runs entirely under the VMA
//!   domain's RCU guard and installs its PTE only after re-checking, under
//!   the PTL, that the tree still maps the address to the same VMA object
//!   (pgtable.rs PT4 makes that re-check sound against a racing zap).
//!   `rcu-sync`'s munmap waits for a grace period before returning, so the
//!   range can be reused at once. `rcu-dead`'s munmap does not wait for a
//!   grace period (unless 8,192 dead entries are still pending, unmap.rs
//!   U4: a bound on memory): it leaves a dead entry (vma.rs V5) over the range, which
//!   placement cannot use; the page tables under it are unhooked and the
//!   entry erased only after a grace period (by the first mm call after a
//!   grace period passed the state the munmap took, `DeadEntry`);
//!   `MAP_FIXED` over a live dead entry synchronises first.
//! - S5. `rcu-refcount` (solution 2) is *unsafe by design*: a fault takes a
//!   counted reference to the VMA and installs its PTE without re-checking.
//!   A fault that found the VMA before a munmap can install a PTE after the
//!   munmap's zap: the stale PTE problem of the thread. It exists so the
//!   checker can prove it catches that. Never a default. Its fault stays
//!   in a read-side section of the VMA domain to the end, and the tables
//!   a munmap unhooks are freed on the last put of the unmapped VMAs,
//!   after grace periods of both domains (unmap.rs `TablesOnPut`): the
//!   stale PTE lands in a live or an unhooked table, which the checker
//!   sees (P1, P3), never in freed memory, which would crash it (it did,
//!   in 2 of 150 seeds, while the tables waited for the TLB domain
//!   alone and the section ended before the walk).
//!
//! # Linux
//! `mmap_lock` (pre-6.4 faults), `lock_vma_under_rcu`, `vma_start_read`,
//! `vma_start_write`, `vma_end_write_all` (6.4+ per-VMA locks). Solutions 1
//! to 3 are from Matthew Wilcox's mail of 2021-02-08.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::vma::Vma;

/// How faults and readers are kept safe against mm calls.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum Strategy {
    /// Faults and readers take the mmap lock for read (Linux before 6.4).
    MmapLock,
    /// Per-VMA locks found under RCU (Linux 6.4+). The default: Linux's
    /// exact semantics, with faults that scale.
    #[default]
    VmaLock,
    /// Solution 1: faults under RCU; munmap synchronises.
    RcuSync,
    /// Solution 3: faults under RCU; munmap leaves a dead entry and does
    /// not wait for a grace period (unless 8,192 are pending: S4).
    RcuDead,
    /// Solution 2: refcounted VMAs. Unsafe by design (S5); for the checker.
    RcuRefcount,
}

impl Strategy {
    /// Every strategy, in the thread's order of discussion.
    pub const ALL: [Strategy; 5] =
        [Strategy::MmapLock, Strategy::VmaLock, Strategy::RcuSync, Strategy::RcuDead, Strategy::RcuRefcount];

    /// The name used on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Strategy::MmapLock => "mmap-lock",
            Strategy::VmaLock => "vma-lock",
            Strategy::RcuSync => "rcu-sync",
            Strategy::RcuDead => "rcu-dead",
            Strategy::RcuRefcount => "rcu-refcount",
        }
    }

    /// The strategy named `s` ([`Strategy::name`]).
    pub fn from_name(s: &str) -> Option<Strategy> {
        Strategy::ALL.into_iter().find(|x| x.name() == s)
    }

    /// Whether it is correct (all but `rcu-refcount`, S5).
    pub fn is_safe(self) -> bool {
        self != Strategy::RcuRefcount
    }
}

impl std::fmt::Display for Strategy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Strategy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Strategy::from_name(s).ok_or_else(|| {
            let names: Vec<_> = Strategy::ALL.iter().map(|x| x.name()).collect();
            format!("unknown strategy {s:?}; one of {}", names.join(", "))
        })
    }
}

/// Dead entries an address space keeps before a munmap waits for a grace
/// period and reaps them all (unmap.rs U4).
pub const DEAD_LIMIT: usize = 8192;

/// Dead entries past which a munmap helps their grace period along,
/// without blocking, every [`DEAD_HELP_EVERY`] entries (unmap.rs U8).
pub const DEAD_HELP: usize = DEAD_LIMIT / 4;

/// How often (in dead entries added) a munmap past [`DEAD_HELP`] tries.
pub const DEAD_HELP_EVERY: usize = 128;

/// Most expired dead entries an mm call erases on its way in (unmap.rs U5).
pub const REAP_BATCH: usize = 16;

/// A dead entry in the mm state's queue (S4): its range, and the grace
/// period state taken right after it was stored (Linux's
/// `get_state_synchronize_rcu()`): once a full grace period has elapsed
/// since (`poll_state`), no reader or fault that found the unmapped VMA
/// is left, and the next mm call may erase it. Why a state, not a flag
/// the RCU callback sets in the entry: a reap of thousands of expired
/// entries (proc-vs-map's rcu-dead: 1,300–3,000 at once, 180–420 µs)
/// read and wrote every tomb's cold cache line; the queue is contiguous
/// and the state check is one load of a hot counter (mm.rs A9).
#[derive(Clone, Copy, Debug)]
pub(crate) struct DeadEntry {
    pub(crate) start: u64,
    pub(crate) end: u64,
    pub(crate) gp: rcuvm_rcu::GpState,
}

/// `vma_start_read()`: read-locks `vma` unless a writer has it
/// write-locked in the current write cycle (S3). The caller re-checks that
/// the VMA is still in the tree.
pub(crate) fn vma_start_read(vma: &Vma, mm_lock_seq: &AtomicU64) -> bool {
    // ORDERING: SeqCst on the reader count and both sequences: a Dekker
    // pairing with `vma_start_write` (store seq, then load readers): either
    // the writer sees this reader or this reader sees the mark.
    if vma.rt.lock_seq.load(Ordering::SeqCst) == mm_lock_seq.load(Ordering::SeqCst) {
        return false;
    }
    vma.rt.readers.fetch_add(1, Ordering::SeqCst);
    if vma.rt.lock_seq.load(Ordering::SeqCst) == mm_lock_seq.load(Ordering::SeqCst) {
        vma.rt.readers.fetch_sub(1, Ordering::SeqCst);
        return false;
    }
    true
}

/// `vma_end_read()`.
pub(crate) fn vma_end_read(vma: &Vma) {
    // ORDERING: Release: the fault's work happens before a writer that
    // sees the count drop.
    vma.rt.readers.fetch_sub(1, Ordering::Release);
}

/// `vma_start_write()`: marks `vma` write-locked for this write cycle and
/// waits for its readers to leave (S3). mmap write lock held.
pub(crate) fn vma_start_write(vma: &Vma, mm_lock_seq: &AtomicU64) {
    let seq = mm_lock_seq.load(Ordering::SeqCst);
    if vma.rt.lock_seq.swap(seq, Ordering::SeqCst) == seq {
        return;
    }
    let mut spins = 0u32;
    while vma.rt.readers.load(Ordering::SeqCst) != 0 {
        spins += 1;
        if spins < 64 {
            std::hint::spin_loop();
        } else {
            std::thread::yield_now();
        }
    }
}
