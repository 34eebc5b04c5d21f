//! Counters and latency histograms of a domain.
//!
//! # Owns
//! [`StatsInner`], written by grace periods and the callback queue, and the
//! public snapshot [`Stats`].
//!
//! # Invariants
//! - T1. Counters are monotonic; a snapshot is not atomic across fields, but
//!   `callbacks_run <= callbacks_queued` always holds in it (run is read first).
//!
//! # Concurrency
//! Any thread. Histograms sit behind one mutex, taken once per grace period,
//! never on the read path.

use std::time::Duration;

use hdrhistogram::Histogram;

use crate::membarrier::FenceMode;
use crate::sync::{AtomicU64, Mutex, Ordering};

/// Latency histograms are in nanoseconds, up to one minute, 2 significant
/// digits (1%). Why not 3: a histogram of 3 digits over that range is
/// 221 KB, and every address space of rcuvm has two domains with two each
/// (0.9 MB of what was then its 3 MB, empty); at 2 digits they are
/// about 30 KB, and
/// each is made only at its first grace period (`StatsInner::latency`).
fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000_000, 2).expect("valid histogram bounds")
}

#[derive(Debug)]
pub(crate) struct StatsInner {
    grace_periods: AtomicU64,
    expedited_grace_periods: AtomicU64,
    pub(crate) callbacks_queued: AtomicU64,
    pub(crate) callbacks_run: AtomicU64,
    pub(crate) callbacks_panicked: AtomicU64,
    pub(crate) callbacks_pending_max: AtomicU64,
    pub(crate) helped_batches: AtomicU64,
    pub(crate) callbacks_run_by_callers: AtomicU64,
    pub(crate) caller_gps: AtomicU64,
    pub(crate) caller_takes: AtomicU64,
    /// Normal and expedited grace-period latencies (in that order), each
    /// made at its first grace period: an idle domain (an address space
    /// never unmapped from) holds none of their 60 KB.
    latency: Mutex<[Option<Histogram<u64>>; 2]>,
}

impl StatsInner {
    pub(crate) fn new() -> Self {
        Self {
            grace_periods: AtomicU64::new(0),
            expedited_grace_periods: AtomicU64::new(0),
            callbacks_queued: AtomicU64::new(0),
            callbacks_run: AtomicU64::new(0),
            callbacks_panicked: AtomicU64::new(0),
            callbacks_pending_max: AtomicU64::new(0),
            helped_batches: AtomicU64::new(0),
            callbacks_run_by_callers: AtomicU64::new(0),
            caller_gps: AtomicU64::new(0),
            caller_takes: AtomicU64::new(0),
            latency: Mutex::new([None, None]),
        }
    }

    pub(crate) fn record_gp(&self, expedited: bool, took: Duration) {
        let ns = (took.as_nanos() as u64).clamp(1, 60_000_000_000);
        let mut h = self.latency.lock();
        if expedited {
            self.expedited_grace_periods.fetch_add(1, Ordering::Relaxed);
            h[1].get_or_insert_with(histogram).saturating_record(ns);
        } else {
            self.grace_periods.fetch_add(1, Ordering::Relaxed);
            h[0].get_or_insert_with(histogram).saturating_record(ns);
        }
    }

    pub(crate) fn snapshot(&self, readers: usize, fence_mode: FenceMode) -> Stats {
        let callbacks_run = self.callbacks_run.load(Ordering::Acquire);
        let callbacks_queued = self.callbacks_queued.load(Ordering::Acquire);
        let h = self.latency.lock();
        Stats {
            grace_periods: self.grace_periods.load(Ordering::Relaxed),
            expedited_grace_periods: self.expedited_grace_periods.load(Ordering::Relaxed),
            callbacks_queued,
            callbacks_run,
            callbacks_pending: callbacks_queued - callbacks_run,
            callbacks_pending_max: self.callbacks_pending_max.load(Ordering::Relaxed),
            callbacks_panicked: self.callbacks_panicked.load(Ordering::Relaxed),
            helped_batches: self.helped_batches.load(Ordering::Relaxed),
            callbacks_run_by_callers: self.callbacks_run_by_callers.load(Ordering::Relaxed),
            caller_gps: self.caller_gps.load(Ordering::Relaxed),
            caller_takes: self.caller_takes.load(Ordering::Relaxed),
            reader_slots: readers,
            gp_latency_ns: h[0].clone().unwrap_or_else(histogram),
            expedited_latency_ns: h[1].clone().unwrap_or_else(histogram),
            fence_mode,
        }
    }
}

/// A snapshot of a domain's statistics, from [`Domain::stats`](crate::Domain::stats).
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Stats {
    /// Normal grace periods run (shared ones count once).
    pub grace_periods: u64,
    /// Expedited grace periods run.
    pub expedited_grace_periods: u64,
    /// Callbacks ever queued by `call`/`retire`.
    pub callbacks_queued: u64,
    /// Callbacks that have run.
    pub callbacks_run: u64,
    /// Queued and not yet run.
    pub callbacks_pending: u64,
    /// The largest `callbacks_pending` ever seen.
    pub callbacks_pending_max: u64,
    /// Callbacks that panicked (the panic is caught and reported on stderr).
    pub callbacks_panicked: u64,
    /// Batches run by callers that helped because the backlog was full.
    pub helped_batches: u64,
    /// Callbacks run by callers of `run_ready` (callback.rs C6).
    pub callbacks_run_by_callers: u64,
    /// Grace periods completed by callers that would not wait for the
    /// reclaimer (grace.rs P5, callback.rs C10).
    pub caller_gps: u64,
    /// Batches a `call` took from the queue because the reclaimer was
    /// late to (callback.rs C12).
    pub caller_takes: u64,
    /// Reader slots ever registered (one per thread that used the domain at
    /// the same time as others).
    pub reader_slots: usize,
    /// Latency of normal grace periods, in nanoseconds.
    pub gp_latency_ns: Histogram<u64>,
    /// Latency of expedited grace periods, in nanoseconds.
    pub expedited_latency_ns: Histogram<u64>,
    /// How readers and writers fence in this process.
    pub fence_mode: FenceMode,
}
