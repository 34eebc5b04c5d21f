//! Histories for the checker: what every access, mm call and maps reader
//! did, and when.
//!
//! # Owns
//! [`Recorder`] (one per recorded address space: the merged events), the
//! event types, and the clock ([`now`]).
//!
//! # Invariants
//! - H1. The clock is one process-wide monotonic nanosecond count
//!   (`CLOCK_MONOTONIC` through `Instant`), so the intervals of events of
//!   different threads compare: if event A ended before event B began (in
//!   real time, or by a happens-before edge), then `A.end <= B.start`.
//! - H2. An event's interval contains its effect. An access is timed from
//!   before its first TLB lookup to after its last touch of the frame; an
//!   mm call from the moment it holds the mmap lock to the moment its
//!   effects are complete (shootdown done, frames freed, `rcu-sync`'s grace
//!   period over), still under the lock, so calls' intervals are disjoint
//!   and in the order of [`History::calls`]; a maps reader from before its
//!   guard to after its last line. A call's population (mlock.rs L5) runs
//!   after its interval, under the read lock, as CPUs' faults run (its
//!   pages are no VMA change; the calls that populate ignore its
//!   failures, so [`CallEvent::result`] is still what the call returned).
//!   Recorded calls: `mmap`, `munmap`, `mprotect`, `mremap`, `madvise`
//!   (but `MADV_POPULATE_*`, which takes only the read lock and changes no
//!   VMA) and `brk`; not `mlock` and its kin, `fork` or stack growth.
//! - H3. `CallEvent::after` is the tree's exact state after the call (taken
//!   under the mmap write lock, dead entries left out): the state the
//!   oracle checks every other event against.
//! - H4. Recording writes nothing shared per access: each `Cpu` appends to
//!   its own buffer and merges it into the recorder when dropped. Calls,
//!   reads and copies (rare) push under a mutex.
//! - H5. Every copy-on-write that installed a copy of an anonymous frame
//!   (one `fork` shared, fault.rs FL11) is recorded as a [`CopyEvent`]:
//!   which incarnation the new one began as a copy of. Why: the oracle's
//!   "nothing is lost" (P5) must know what a page held before the CPU's
//!   first write through its copy. A first write to anonymous memory
//!   copies nothing (the page starts as zeroes) and is not recorded; nor
//!   is a private file page's copy of the page cache (the checker maps no
//!   file).
//!
//! Everything here exists with or without the `record` feature; the hooks
//! in `cpu.rs` and `mm.rs` that fill it are compiled only with it, so an
//! unrecorded build pays nothing on the access path.
//!
//! # Concurrency
//! Any thread. A `Recorder` may be shared by several address spaces only
//! if their histories are to be checked as one (they are not, in rcuvm).
//!
//! # Linux
//! None: this is the instrumentation a kernel would get from tracepoints
//! (`trace_mm_*`, `trace_tlb_flush`) read by an offline checker.

use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use crate::cpu::Touched;
use crate::fault::AccessError;
use crate::strace::MmOp;
use crate::uapi::Errno;
use crate::vma::VmFlags;

/// Nanoseconds since the first call in this process (H1).
pub fn now() -> u64 {
    static BASE: OnceLock<Instant> = OnceLock::new();
    BASE.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

/// One access by a CPU.
#[derive(Clone, Copy, Debug)]
pub struct AccessEvent {
    /// The CPU (unique per recorder).
    pub cpu: u32,
    /// The address.
    pub va: u64,
    /// A write (else a read).
    pub write: bool,
    /// The value read or written (0 for `Cpu::access` with its own op).
    pub value: u64,
    /// The frame touched and its generation, or the signal.
    pub result: Result<Touched, AccessError>,
    /// When it began (H2).
    pub start: u64,
    /// When it ended.
    pub end: u64,
}

/// A VMA as the oracle needs it (H3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VmaState {
    /// `vm_start`.
    pub start: u64,
    /// `vm_end`.
    pub end: u64,
    /// `vm_flags`.
    pub flags: VmFlags,
    /// `vm_pgoff`.
    pub pgoff: u64,
}

/// One mm call.
#[derive(Clone, Debug)]
pub struct CallEvent {
    /// What was called, as the strace parser names calls (a file is shown
    /// as fd -1 with its path: the recorder sees no descriptors).
    pub op: MmOp,
    /// What it returned (the address for `mmap`/`mremap`/`brk`, 0 otherwise).
    pub result: Result<u64, Errno>,
    /// Holding the mmap lock from here (H2).
    pub start: u64,
    /// Effects complete by here.
    pub end: u64,
    /// The VMAs after it, in address order (H3).
    pub after: Vec<VmaState>,
}

/// What a reader read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadKind {
    /// `maps()`.
    Maps,
    /// `smaps()`.
    Smaps,
    /// `query(addr)`: the text is the line of the VMA found, or empty.
    Query(u64),
}

/// One maps, smaps or query read.
#[derive(Clone, Debug)]
pub struct ReadEvent {
    /// Which.
    pub kind: ReadKind,
    /// What it returned.
    pub text: String,
    /// When it began.
    pub start: u64,
    /// When it ended.
    pub end: u64,
}

/// A copy-on-write of a frame (H5): the new incarnation began as a copy
/// of the old one's contents.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CopyEvent {
    /// The frame copied and its generation.
    pub from: (u64, u64),
    /// The new frame and its generation.
    pub to: (u64, u64),
    /// When the copy was installed (after it was made).
    pub at: u64,
}

/// Everything recorded, merged (H4).
#[derive(Debug, Default)]
pub struct History {
    /// Accesses, grouped by CPU, each CPU's in program order.
    pub accesses: Vec<Vec<AccessEvent>>,
    /// Calls in the order they held the mmap lock (H2).
    pub calls: Vec<CallEvent>,
    /// Reads, in no particular order.
    pub reads: Vec<ReadEvent>,
    /// Copies-on-write (H5), in no particular order.
    pub copies: Vec<CopyEvent>,
}

/// Collects the events of one address space (H4).
#[derive(Debug, Default)]
pub struct Recorder {
    history: Mutex<History>,
    next_cpu: std::sync::atomic::AtomicU32,
}

// Without the `record` feature nothing fills a recorder.
#[cfg_attr(not(feature = "record"), allow(dead_code))]
impl Recorder {
    /// An empty recorder, to give to [`crate::MmBuilder::recorder`].
    pub fn new() -> Arc<Recorder> {
        Arc::new(Recorder::default())
    }

    /// Takes what was recorded so far. CPUs still alive have not merged
    /// their buffers yet (they do when dropped).
    pub fn take(&self) -> History {
        std::mem::take(&mut *self.history.lock().unwrap_or_else(|e| e.into_inner()))
    }

    fn with<R>(&self, f: impl FnOnce(&mut History) -> R) -> R {
        f(&mut self.history.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// A CPU id for a new CPU.
    pub(crate) fn cpu_id(&self) -> u32 {
        self.next_cpu.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    }

    /// Merges a CPU's buffer.
    pub(crate) fn merge(&self, log: Vec<AccessEvent>) {
        if !log.is_empty() {
            self.with(|h| h.accesses.push(log));
        }
    }

    /// Records a call (under the mmap lock, H2).
    pub(crate) fn call(&self, e: CallEvent) {
        self.with(|h| h.calls.push(e));
    }

    /// Records a copy-on-write (H5).
    pub(crate) fn copied(&self, from: (u64, u64), to: (u64, u64)) {
        let at = now();
        self.with(|h| h.copies.push(CopyEvent { from, to, at }));
    }

    /// Records a read.
    pub(crate) fn read(&self, kind: ReadKind, text: String, start: u64) {
        let end = now();
        self.with(|h| h.reads.push(ReadEvent { kind, text, start, end }));
    }
}

/// What an mm call returned, as [`CallEvent::result`] keeps it.
#[cfg_attr(not(feature = "record"), allow(dead_code))]
pub(crate) trait Outcome {
    fn outcome(&self) -> Result<u64, Errno>;
}

impl Outcome for Result<u64, Errno> {
    fn outcome(&self) -> Result<u64, Errno> {
        *self
    }
}

impl Outcome for Result<(), Errno> {
    fn outcome(&self) -> Result<u64, Errno> {
        self.map(|()| 0)
    }
}

impl Outcome for u64 {
    fn outcome(&self) -> Result<u64, Errno> {
        Ok(*self)
    }
}
