//! An RCU domain: one grace-period counter, its readers and its callbacks.
//!
//! # Owns
//! [`Domain`] (the owning handle), [`DomainInner`] (the shared state, also held
//! by the reclaimer thread, [`RcuPtr`](crate::RcuPtr)s,
//! [`Unlinked`](crate::Unlinked) values and each thread registered in it:
//! reader.rs R6) and [`Config`].
//!
//! # Invariants
//! - O1. Domain ids are unique for the life of the process and never 0; a
//!   guard's domain check relies on it (pointer.rs). The thread-local lookup
//!   keys by address instead (reader.rs R6).
//! - O2. `gp` starts at `GP_UNIT` and grows by `GP_UNIT` per grace period.
//!   Its top bit is `FENCE_BIT` when the domain's readers must fence
//!   (membarrier.rs B1), fixed at creation: every counter value, snapshot and
//!   `GpState` of a domain carries the same bit, so comparing them is
//!   unchanged (2^47 grace periods before the count could reach it).
//! - O3. Dropping a `Domain` needs `&mut`, so no [`Guard`] of it exists then:
//!   the drop runs every pending callback without waiting for readers
//!   (callback.rs C4), and later retirements run at once.
//!
//! # Concurrency
//! `read` is lock-free (reader.rs). `synchronize*`, `barrier` block and panic
//! inside a read-side section of the same domain (grace.rs P4). `call` and
//! `retire` may be called anywhere, including inside a section.
//!
//! # Linux
//! The kernel has one RCU domain; SRCU has many (`struct srcu_struct`).
//! rcuvm gives each address space its own, like an `srcu_struct` with RCU's
//! cheap readers.

use std::sync::atomic::AtomicU64 as StdAtomicU64;

use crossbeam_utils::CachePadded;

use crate::callback::{self, CallbackQueue};
use crate::deferred::Deferred;
use crate::grace::{GpState, Share};
use crate::guard::{Guard, Reader};
use crate::membarrier::{self, FenceMode};
use crate::reader::{FENCE_BIT, GP_UNIT, ReadSide, Registry};
use crate::stats::{Stats, StatsInner};
use crate::sync::{Arc, AtomicU64};

/// Tuning of a [`Domain`].
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Config {
    /// Pending callbacks past which callers outside read-side sections help
    /// run the backlog instead of queueing more (callback.rs C3). The
    /// reclaimer expedites its grace periods past half of it.
    pub callback_limit: usize,
    /// How long the reclaimer lets callbacks gather before it starts a
    /// grace period for them (callback.rs C5). Zero: at once.
    pub batch_delay: std::time::Duration,
    /// How long the reclaimer leaves a batch whose grace period has passed
    /// to callers of [`Domain::run_ready`] before it runs what they left
    /// (callback.rs C6). Unused until a thread calls `run_ready`.
    pub ready_delay: std::time::Duration,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            callback_limit: 1 << 16,
            batch_delay: std::time::Duration::from_millis(1),
            ready_delay: std::time::Duration::from_millis(1),
        }
    }
}

impl Config {
    /// Sets [`callback_limit`](Self::callback_limit) (at least 1).
    pub fn callback_limit(mut self, n: usize) -> Self {
        self.callback_limit = n.max(1);
        self
    }

    /// Sets [`batch_delay`](Self::batch_delay).
    pub fn batch_delay(mut self, d: std::time::Duration) -> Self {
        self.batch_delay = d;
        self
    }

    /// Sets [`ready_delay`](Self::ready_delay).
    pub fn ready_delay(mut self, d: std::time::Duration) -> Self {
        self.ready_delay = d;
        self
    }
}

/// The state shared by a domain's handle, its reclaimer and its pointers.
#[derive(Debug)]
pub(crate) struct DomainInner {
    /// The grace-period counter (O2) and fence mode, read by every
    /// outermost `read()`.
    pub(crate) read_side: CachePadded<ReadSide>,
    /// grace.rs P2.
    pub(crate) gp_completed: AtomicU64,
    pub(crate) registry: Registry,
    pub(crate) share_normal: Share,
    pub(crate) share_expedited: Share,
    /// grace.rs P6: the reclaimer's grace periods, shared with no caller
    /// of `synchronize`, which would wait at their sleeping pace.
    pub(crate) share_background: Share,
    pub(crate) callbacks: CallbackQueue,
    pub(crate) stats: StatsInner,
    pub(crate) config: Config,
    pub(crate) fence_mode: FenceMode,
}

impl DomainInner {
    /// The domain's id (O1).
    #[inline(always)]
    pub(crate) fn id(&self) -> u64 {
        self.read_side.id
    }
}

/// O1: a plain std atomic also under loom; ids are not part of any protocol.
static NEXT_ID: StdAtomicU64 = StdAtomicU64::new(1);

/// An RCU domain.
///
/// Readers enter sections with [`read`](Self::read); updaters wait for the
/// readers that might still see what they unlinked with
/// [`synchronize`](Self::synchronize), or defer the freeing with
/// [`retire`](Self::retire) and [`call`](Self::call).
///
/// # Examples
/// ```
/// use rcuvm_rcu::{Domain, RcuPtr};
///
/// let domain = Domain::new();
/// let config = RcuPtr::new(&domain, Some(Box::new(String::from("v1"))));
/// {
///     let g = domain.read();
///     assert_eq!(config.load(&g).map(String::as_str), Some("v1"));
/// }
/// // Publish a new version; the old one is freed after a grace period.
/// config.swap(Some(Box::new(String::from("v2")))).unwrap().retire();
/// domain.barrier();
/// assert_eq!(domain.stats().callbacks_pending, 0);
/// ```
// Aligned to two cache lines (the prefetched pair): a `Domain` put in an
// `Arc` or in a struct never shares a line with the count of that `Arc` or
// with a neighbour another thread writes, so that the pointer every
// `read()` loads stays in the reader's cache.
#[repr(align(128))]
pub struct Domain {
    pub(crate) inner: Arc<DomainInner>,
}

impl std::fmt::Debug for Domain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Domain").field("id", &self.inner.id()).finish_non_exhaustive()
    }
}

impl Default for Domain {
    fn default() -> Self {
        Self::new()
    }
}

impl Domain {
    /// A new domain with the default [`Config`].
    pub fn new() -> Self {
        Self::with_config(Config::default())
    }

    /// A new domain.
    pub fn with_config(config: Config) -> Self {
        let fence_mode = membarrier::init();
        let inner = DomainInner {
            read_side: CachePadded::new(ReadSide {
                gp: AtomicU64::new(GP_UNIT | if fence_mode == FenceMode::Membarrier { 0 } else { FENCE_BIT }),
                id: NEXT_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            }),
            gp_completed: AtomicU64::new(0),
            registry: Registry::new(),
            share_normal: Share::new(),
            share_expedited: Share::new(),
            share_background: Share::new(),
            callbacks: CallbackQueue::new(),
            stats: StatsInner::new(),
            config,
            fence_mode,
        };
        Domain { inner: Arc::new(inner) }
    }

    /// The process-wide default domain.
    #[cfg(not(rcuvm_loom))]
    pub fn global() -> &'static Domain {
        static GLOBAL: std::sync::OnceLock<Domain> = std::sync::OnceLock::new();
        GLOBAL.get_or_init(Domain::new)
    }

    /// This domain's id, unique in the process.
    pub fn id(&self) -> u64 {
        self.inner.id()
    }

    /// Enters a read-side section; it lasts until the guard is dropped.
    ///
    /// Context: any thread. After the thread's first call for this domain it
    /// takes no lock, allocates nothing, makes no system call and does no
    /// atomic read-modify-write, so it may be used in a signal handler.
    #[inline(always)]
    pub fn read(&self) -> Guard<'_> {
        Guard::enter(&self.inner)
    }

    /// This thread's registration, to enter sections without the
    /// thread-local lookup (see [`Reader`]).
    pub fn reader(&self) -> Reader<'_> {
        Reader::new(&self.inner)
    }

    /// Whether the calling thread is inside a read-side section of this domain.
    pub fn in_read_section(&self) -> bool {
        crate::reader::nesting_in(&self.inner) != 0
    }

    /// Whether the calling thread is running a callback of this domain (at
    /// any depth, callback.rs C8): where `barrier` would wait for itself.
    pub fn in_callback(&self) -> bool {
        crate::callback::in_callback_of(self.id())
    }

    /// Waits until every reader that was inside a read-side section when this
    /// was called has left it. Concurrent callers share grace periods.
    ///
    /// Context: may sleep; waits politely (spins briefly, then yields and
    /// sleeps up to 1 ms between checks).
    ///
    /// # Panics
    /// Inside a read-side section of this domain (it would never return).
    pub fn synchronize(&self) {
        self.inner.assert_outside_read_section("synchronize()");
        self.inner.synchronize_unchecked(false);
    }

    /// Like [`synchronize`](Self::synchronize), but never sleeps: it fences
    /// every running thread of the process with
    /// `membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED)` (or a fence where the
    /// kernel lacks it) and spins, then yields, until the readers are gone.
    ///
    /// # Panics
    /// Inside a read-side section of this domain.
    pub fn synchronize_expedited(&self) {
        self.inner.assert_outside_read_section("synchronize_expedited()");
        self.inner.synchronize_unchecked(true);
    }

    /// A cookie that [`poll_state`](Self::poll_state) turns into "has a full
    /// grace period elapsed since?". Linux: `get_state_synchronize_rcu()`.
    pub fn get_state(&self) -> GpState {
        self.inner.get_state()
    }

    /// Whether a full grace period elapsed since `state` was taken, without
    /// waiting. Linux: `poll_state_synchronize_rcu()`.
    pub fn poll_state(&self, state: GpState) -> bool {
        self.inner.poll_state(state)
    }

    /// Waits for a grace period only if none elapsed since `state`.
    /// Linux: `cond_synchronize_rcu()`.
    ///
    /// # Panics
    /// Inside a read-side section of this domain.
    pub fn cond_synchronize(&self, state: GpState) {
        if !self.poll_state(state) {
            self.synchronize();
        }
    }

    /// One attempt, that never blocks, at a grace period that passes
    /// `state`: one `membarrier` and a scan of the reader slots (grace.rs
    /// P5, as callers that help a late batch do, callback.rs C10). Returns
    /// whether `state` has passed, now. It fails while a reader that began
    /// before the attempt is still inside (the caller's own section too),
    /// and succeeds at once when no grace period has run only because
    /// nobody ran one (a reclaimer that gets no CPU). Linux has no such
    /// call; the nearest is `start_poll_synchronize_rcu_expedited()`
    /// followed by `poll_state_synchronize_rcu()`.
    ///
    /// Context: any; it costs a `membarrier` (an IPI to each CPU running
    /// the process), so call it sparingly.
    pub fn try_complete(&self, state: GpState) -> bool {
        self.inner.try_grace_period(state)
    }

    /// Runs `f` after a grace period, on the reclaimer thread (or on a caller
    /// that helps with a full backlog, or on a thread that calls
    /// [`run_ready`](Self::run_ready), in that thread's context), never
    /// inside a read-side section.
    ///
    /// Context: any, including inside a read-side section.
    pub fn call<F: FnOnce() + Send + 'static>(&self, f: F) {
        callback::enqueue(&self.inner, Deferred::call(f));
    }

    /// Drops `b` after a grace period. Linux: `kfree_rcu()`.
    ///
    /// Context: any, including inside a read-side section.
    pub fn retire<T: Send + 'static>(&self, b: Box<T>) {
        callback::enqueue(&self.inner, Deferred::drop_box(b));
    }

    /// Runs up to `max` callbacks whose grace period has passed on this
    /// thread, oldest first, and returns how many ran. Linux: the callbacks
    /// `rcu_core()` invokes on the CPU that queued them, `blimit` at a time.
    ///
    /// From the first call on, the reclaimer leaves each finished batch to
    /// callers for [`Config::ready_delay`] before it runs what they left
    /// (callback.rs C6). When nothing is ready but a batch has waited for
    /// its grace period `ready_delay` or more (the reclaimer has no CPU),
    /// the call tries that grace period itself, without blocking: one
    /// `membarrier` and a scan of the reader slots, at most once per
    /// `ready_delay` per domain (C10). Call it where the thread holds no lock a callback
    /// might take, typically right after queueing work with
    /// [`call`](Self::call), with a `max` above the number queued per call
    /// so that callers keep up.
    ///
    /// Context: outside read-side sections and callbacks of this domain;
    /// anywhere else it runs nothing and returns 0.
    pub fn run_ready(&self, max: usize) -> usize {
        callback::run_ready(&self.inner, max)
    }

    /// Waits until every callback queued before this call has run.
    /// Linux: `rcu_barrier()`.
    ///
    /// # Panics
    /// Inside a read-side section of this domain, or from one of its callbacks.
    pub fn barrier(&self) {
        callback::barrier(&self.inner);
    }

    /// A snapshot of the domain's counters and latency histograms.
    pub fn stats(&self) -> Stats {
        self.inner.stats.snapshot(self.inner.registry.len(), self.inner.fence_mode)
    }

    /// How this process fences readers against grace periods.
    pub fn fence_mode(&self) -> FenceMode {
        self.inner.fence_mode
    }

    /// The configuration this domain was built with.
    pub fn config(&self) -> &Config {
        &self.inner.config
    }
}

impl Drop for Domain {
    fn drop(&mut self) {
        // O3: no guard exists; run everything still queued.
        callback::shutdown(&self.inner);
        self.inner.registry.kill();
    }
}
