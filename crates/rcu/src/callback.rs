//! Deferred callbacks: `call`, `retire`, `barrier`, and the reclaimer thread.
//!
//! # Owns
//! [`CallbackQueue`]: the domain's FIFO of pending callbacks, the batches in
//! flight, and the reclaimer thread's handle.
//!
//! # Invariants
//! - C1. Every callback gets a sequence number in queue order. A batch is a
//!   contiguous run `[start, end)` taken from the head of the queue; it runs
//!   only after a grace period that started after it was taken, on the
//!   reclaimer thread or on a helping caller, never inside a read-side
//!   section.
//! - C2. The *watermark* is the start of the oldest batch in flight, or the
//!   next sequence number to be taken if none is. Every callback below it has
//!   run. `barrier` waits until the watermark passes the sequence numbers
//!   handed out before it was called.
//! - C3. Backlog bound: a caller outside any read-side section that finds
//!   more than `callback_limit` callbacks pending takes the queue and runs it
//!   itself after an expedited grace period. Callers inside a section cannot
//!   wait (P4), so they only wake the reclaimer, which expedites once the
//!   backlog passes half the limit.
//! - C4. Once the domain is dropped (`dead`), no reader can exist (guards
//!   borrow the domain), so callbacks queued later run at once.
//! - C5. Batching: the reclaimer waits up to `Config::batch_delay` after the
//!   first callback of a batch before starting its grace period, so a
//!   stream of `call`s costs one grace period (one `membarrier` IPI to every
//!   CPU of the process) per delay, not one per call. `barrier`, a half-full
//!   backlog and dropping the domain cut the wait short.
//!
//! # Linux
//! `call_rcu()`, `kfree_rcu()`, `rcu_barrier()`; the callback-flood handling
//! of `rcu_do_batch()`/`rcu_force_quiescent_state` becomes C3.

use std::cell::Cell;
use std::panic::{AssertUnwindSafe, catch_unwind};

use crate::deferred::Deferred;
use crate::domain::DomainInner;
use crate::reader;
use crate::sync::{Arc, Condvar, JoinHandle, Mutex, Ordering, rcu_thread_local, thread};

rcu_thread_local! {
    /// The domain whose callbacks this thread is running now (0: none).
    static RUNNING_CALLBACKS: Cell<u64> = Cell::new(0);
}

#[derive(Default)]
struct QueueState {
    pending: Vec<Deferred>,
    /// Sequence numbers handed out (C1).
    enqueued: u64,
    /// All sequence numbers below this have left `pending`.
    taken: u64,
    /// First sequence number of each batch taken and not finished (C2).
    in_flight: Vec<u64>,
    /// Callbacks that have run; `enqueued - run` is the backlog (C3).
    run: u64,
    barrier_waiters: usize,
    shutdown: bool,
    dead: bool,
    reclaimer: Option<JoinHandle<()>>,
}

impl QueueState {
    fn watermark(&self) -> u64 {
        self.in_flight.iter().copied().min().unwrap_or(self.taken)
    }

    fn take_batch(&mut self) -> (u64, Vec<Deferred>) {
        let start = self.taken;
        self.taken = self.enqueued;
        self.in_flight.push(start);
        (start, std::mem::take(&mut self.pending))
    }
}

/// A domain's callback queue.
pub(crate) struct CallbackQueue {
    state: Mutex<QueueState>,
    /// The reclaimer sleeps here.
    work: Condvar,
    /// Barrier waiters sleep here.
    finished: Condvar,
}

impl std::fmt::Debug for CallbackQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CallbackQueue").finish_non_exhaustive()
    }
}

impl CallbackQueue {
    pub(crate) fn new() -> Self {
        Self { state: Mutex::new(QueueState::default()), work: Condvar::new(), finished: Condvar::new() }
    }
}

/// Whether this thread may wait for a grace period of `d` (C3, P4).
fn may_wait(d: &DomainInner) -> bool {
    reader::nesting_in(d) == 0 && RUNNING_CALLBACKS.with(|r| r.get()) != d.id()
}

/// Queues `cb` to run after a grace period of `d` (C1, C3, C4).
pub(crate) fn enqueue(d: &Arc<DomainInner>, cb: Deferred) {
    let q = &d.callbacks;
    let mut st = q.state.lock();
    if st.dead {
        drop(st);
        // C4: no reader of a dropped domain can exist.
        d.stats.callbacks_queued.fetch_add(1, Ordering::Relaxed);
        cb.run();
        d.stats.callbacks_run.fetch_add(1, Ordering::Release);
        return;
    }
    st.pending.push(cb);
    st.enqueued += 1;
    d.stats.callbacks_queued.fetch_add(1, Ordering::Relaxed);
    let backlog = st.enqueued - st.run;
    d.stats.callbacks_pending_max.fetch_max(backlog, Ordering::Relaxed);
    if st.reclaimer.is_none() && !st.shutdown {
        let dd = d.clone();
        st.reclaimer = Some(thread::spawn(move || reclaimer(dd)));
    }
    if backlog > d.config.callback_limit as u64 && may_wait(d) {
        // C3: help instead of letting the queue grow.
        let (start, batch) = st.take_batch();
        drop(st);
        d.stats.helped_batches.fetch_add(1, Ordering::Relaxed);
        run_batch(d, start, batch, true);
        return;
    }
    if st.pending.len() == 1 || backlog > d.config.callback_limit as u64 / 2 {
        q.work.notify_one();
    }
}

/// Waits for a grace period (unless the domain is gone), then runs `batch`.
fn run_batch(d: &DomainInner, start: u64, batch: Vec<Deferred>, expedite: bool) {
    if !d.callbacks.state.lock().shutdown {
        d.synchronize_unchecked(expedite);
    }
    let n = batch.len() as u64;
    let prev = RUNNING_CALLBACKS.with(|r| r.replace(d.id()));
    for cb in batch {
        if catch_unwind(AssertUnwindSafe(|| cb.run())).is_err() {
            d.stats.callbacks_panicked.fetch_add(1, Ordering::Relaxed);
            eprintln!("rcuvm-rcu: an RCU callback panicked; the panic was caught");
        }
    }
    RUNNING_CALLBACKS.with(|r| r.set(prev));
    let mut st = d.callbacks.state.lock();
    st.in_flight.retain(|&s| s != start);
    st.run += n;
    // ORDERING: Release: a stats reader that sees the count sees the effects.
    d.stats.callbacks_run.fetch_add(n, Ordering::Release);
    d.callbacks.finished.notify_all();
}

/// The reclaimer thread's loop: one batch per grace period, until shutdown
/// with an empty queue.
fn reclaimer(d: Arc<DomainInner>) {
    loop {
        let mut st = d.callbacks.state.lock();
        while st.pending.is_empty() && !st.shutdown {
            st = d.callbacks.work.wait(st);
        }
        if st.pending.is_empty() {
            return;
        }
        // C5: let a batch gather before paying for a grace period, unless
        // someone waits (barrier, drop) or the backlog is half full.
        let delay = d.config.batch_delay;
        if !delay.is_zero()
            && !st.shutdown
            && st.barrier_waiters == 0
            && st.enqueued - st.run <= d.config.callback_limit as u64 / 2
        {
            st = d.callbacks.work.wait_timeout(st, delay);
        }
        let backlog = st.enqueued - st.run;
        let expedite = st.barrier_waiters > 0 || backlog > d.config.callback_limit as u64 / 2;
        let (start, batch) = st.take_batch();
        drop(st);
        run_batch(&d, start, batch, expedite);
    }
}

/// `rcu_barrier()`: waits until every callback queued before the call ran (C2).
pub(crate) fn barrier(d: &DomainInner) {
    d.assert_outside_read_section("barrier()");
    assert!(
        RUNNING_CALLBACKS.with(|r| r.get()) != d.id(),
        "rcuvm-rcu: barrier() called from an RCU callback of the same domain; \
         it would wait for itself forever"
    );
    let q = &d.callbacks;
    let mut st = q.state.lock();
    let target = st.enqueued;
    st.barrier_waiters += 1;
    q.work.notify_one();
    while st.watermark() < target {
        st = q.finished.wait(st);
    }
    st.barrier_waiters -= 1;
}

/// Stops the reclaimer after it drained the queue; later callbacks run at
/// once (C4). Called by `Domain::drop`, when no reader can exist.
pub(crate) fn shutdown(d: &DomainInner) {
    let handle = {
        let mut st = d.callbacks.state.lock();
        st.shutdown = true;
        d.callbacks.work.notify_all();
        st.reclaimer.take()
    };
    if let Some(h) = handle {
        // A panic escaping the reclaimer is already reported by the runtime.
        let _ = h.join();
    }
    let (start, batch) = {
        let mut st = d.callbacks.state.lock();
        st.dead = true;
        st.take_batch()
    };
    run_batch(d, start, batch, false);
}
