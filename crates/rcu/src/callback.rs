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
//! - C7. `call` wakes the reclaimer only when it sleeps with no timeout (or
//!   the backlog is half full): from a timed wait (C5, C6) it comes back by
//!   itself. Why: the woken reclaimer preempts the caller as often as not;
//!   in `proc-vs-map` the writer lost its CPU about 1,300 times a second at
//!   this wakeup (perf, sched_switch).
//! - C4. Once the domain is dropped (`dead`), no reader can exist (guards
//!   borrow the domain), so callbacks queued later run at once.
//! - C5. Batching: the reclaimer waits up to `Config::batch_delay` after the
//!   first callback of a batch before starting its grace period, so a
//!   stream of `call`s costs one grace period (one `membarrier` IPI to every
//!   CPU of the process) per delay, not one per call. `barrier`, a half-full
//!   backlog and dropping the domain cut the wait short.
//! - C6. Caller-run callbacks: once a thread has called
//!   [`run_ready`](crate::Domain::run_ready), the reclaimer leaves each batch
//!   whose grace period has passed in `ready` for callers to run, a few at a
//!   time at points they choose (outside sections and callbacks of the
//!   domain), and runs what is left of each batch itself `ready_delay`
//!   after that batch became ready (at once for a barrier, a half-full
//!   backlog or shutdown; its waits for the next batch end in time for
//!   it). A batch leaves `in_flight`
//!   (C2) when its last callback has run, whoever ran it. Why: the thread
//!   that queues callbacks usually allocated what they free; run there, in
//!   bites, the frees stay on its CPU and in its allocator cache, and the
//!   reclaimer no longer takes a CPU away from another thread for a long
//!   batch (measured in the lab's `proc-vs-map`, vm mm.rs A8).
//! - C9. In steady state no allocation or free happens with the queue's
//!   lock held: a taken batch's vector comes back as the next batch's
//!   (`spare`), vectors for ready callbacks are sized before the lock is
//!   taken, and the queues keep their capacity. What is left under the
//!   lock is growth to a new high-water mark (of `pending`, `ready`,
//!   `waiting`, `in_flight`) and the reclaimer's spawn, once. Why:
//!   under glibc, an allocation may sleep on the allocator's arena lock,
//!   and every `call` then waited behind it: in `proc-vs-map` the writer
//!   slept 1,927 times in 2 s on this lock in `call`, while the reclaimer
//!   holding it slept on the arena lock in a free (perf, sched_switch with
//!   call stacks).
//! - C10. Callers finish a late batch's grace period. The reclaimer keeps
//!   each batch it takes in `waiting`, with the grace-period state that
//!   completes it (grace.rs P2), while it waits; a batch whose state is
//!   complete moves to `ready`, whoever completed it. A caller of
//!   `run_ready` that finds nothing ready and the oldest waiting batch
//!   taken `ready_delay` ago or more tries a grace period itself, without
//!   blocking (grace.rs P5), at most once per `ready_delay`. Why: with
//!   every CPU busy (the lab's proc-vs-map: a writer and a maps reader that
//!   never sleeps on two CPUs), the reclaimer waited for a CPU for tens of
//!   milliseconds; `rcu-dead`'s dead entries, expired by callbacks, piled
//!   up to their bound, and munmap waited for grace periods.
//! - C12. Callers take a batch the reclaimer is late to take. Once
//!   callers run callbacks (C6), a `call` that finds no batch waiting
//!   and the oldest pending callback queued `batch_delay + ready_delay`
//!   ago or more (checked every `LATE_CHECK`th callback of a batch: a
//!   clock read) takes the pending callbacks as a batch, with the
//!   grace-period state that completes it, and leaves it in `waiting`
//!   (C10), where callers finish its grace period as they do the
//!   reclaimer's. The reclaimer treats waiting batches as work: it does
//!   not sleep while one waits, and finishes their grace period (or, at
//!   shutdown, runs them) if callers have not within `ready_delay`, so
//!   that a barrier or shutdown never depends on more calls.
//!   - Every batch enters `waiting` in the lock hold that takes it (the
//!     reclaimer's too), so `waiting` and `ready` stay in batch order.
//!   - A `call` whose take emptied the queue does not go on to C3: its
//!     empty batch would stay in flight and stall the watermark (C2;
//!     found in review, `tests/caller_take.rs`).
//!   - In `call`, not `run_ready`: there the check put a clock read on
//!     `run_ready`'s fast path whenever a callback was pending, which is
//!     always under churn; rcuvm's mmap1 (rcu-dead) made 6–56% fewer
//!     pairs than without C12 in all eight alternations, and as many
//!     with the check in `call` (four alternations).
//!
//!   Why: C10 only helped a batch the reclaimer had taken; with every
//!   CPU busy it was often late to take one at all, and grace periods
//!   ended 4 ms or more late (rcuvm's proc-vs-map: 671–1,165 munmaps a
//!   run ended one themselves, vm unmap.rs U8; the tree's node pool ran
//!   dry while its blocks waited, and overflowed when they came back at
//!   once).
//! - C11. `run_ready` allocates nothing in steady state: the callbacks it
//!   takes go in a vector the thread keeps (`BITE`), and the list of
//!   batches they belong to stays on the stack. Why: it runs after every
//!   rcuvm mm call, and under glibc its two small vectors, freed at once,
//!   collected in the allocator's fast bins with the other small frees
//!   until an allocation merged them all (`malloc_consolidate`); in
//!   rcuvm's proc-vs-map the writer's calls that did so took 0.25–0.9 ms
//!   (uprobes on `malloc_consolidate`).
//! - C8. A thread knows every domain whose callbacks it is running, at any
//!   depth (a callback of one domain may run another's through
//!   `run_ready`): inside a callback of a domain, `barrier` of that domain
//!   panics and `call` does not help with its backlog (C3), since either
//!   would wait for the callback that is running. Keeping only the
//!   innermost domain let a callback of `A`, run from a callback of `B`,
//!   call `B.barrier()` and wait forever.
//! - C13. A callback may drop its domain's last handle, also on the
//!   reclaimer: `shutdown` then does not join the reclaimer (itself) but
//!   finishes the drop in place (what is pending runs at once, C4), and
//!   the reclaimer's loop ends when the callback returns. Joining itself
//!   failed (`EDEADLK`), the panic was caught as the callback's, and the
//!   drop stopped halfway: the domain never became `dead` and later
//!   retirements leaked (found by a review).
//!
//! # Linux
//! `call_rcu()`, `kfree_rcu()`, `rcu_barrier()`; the callback-flood handling
//! of `rcu_do_batch()`/`rcu_force_quiescent_state` becomes C3. C6 is how
//! Linux runs callbacks: on the CPU that queued them (`rcu_core()` from
//! softirq), at most `blimit` at a time.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::panic::{AssertUnwindSafe, catch_unwind};

use crate::deferred::Deferred;
use crate::domain::DomainInner;
use crate::grace::{GpState, Wait};
use crate::reader;
use crate::sync::{
    self, Arc, AtomicBool, AtomicU64, Condvar, JoinHandle, Mutex, Ordering, rcu_thread_local, thread,
};

rcu_thread_local! {
    /// The domains whose callbacks this thread is running now, innermost
    /// last: a callback of one domain may run another's (`run_ready`), and
    /// every domain of the stack must be seen (C8).
    static RUNNING_CALLBACKS: RefCell<Vec<u64>> = RefCell::new(Vec::new());
}

rcu_thread_local! {
    /// The domain whose reclaimer this thread is (0: none): a callback
    /// that drops the domain's last handle runs `shutdown` on it (C13).
    static RECLAIMER_OF: Cell<u64> = Cell::new(0);
}

rcu_thread_local! {
    /// C11: this thread's vector for the callbacks `run_ready` takes, empty
    /// between calls (a `run_ready` nested in a callback finds it taken and
    /// uses a vector of its own).
    static BITE: Cell<Vec<(u64, Deferred)>> = Cell::new(Vec::new());
}

/// C11: the largest `BITE` a thread keeps between calls (callbacks).
const BITE_KEEP: usize = 256;

/// C12: how often (in callbacks of a batch) `call` checks whether the
/// reclaimer is late to take it: each check reads the clock. Under loom
/// every deadline has passed: the second callback of a batch is checked,
/// so that a model that queues two sees both the caller and the
/// reclaimer take a batch.
#[cfg(not(rcuvm_loom))]
const LATE_CHECK: usize = 16;
#[cfg(rcuvm_loom)]
const LATE_CHECK: usize = 2;

/// Whether this thread is inside a callback of the domain `id` (C8), at
/// any depth.
pub(crate) fn in_callback_of(id: u64) -> bool {
    RUNNING_CALLBACKS.with(|r| r.borrow().contains(&id))
}

#[derive(Default)]
struct QueueState {
    pending: Vec<Deferred>,
    /// C9: an empty vector with the capacity of an earlier batch, to take
    /// `pending`'s place when a batch is taken.
    spare: Vec<Deferred>,
    /// Sequence numbers handed out (C1).
    enqueued: u64,
    /// All sequence numbers below this have left `pending`.
    taken: u64,
    /// Each batch taken and not finished (C2): its first sequence number
    /// and how many of its callbacks have not run yet.
    in_flight: Vec<(u64, usize)>,
    /// C6: callbacks whose grace period has passed, each with its batch's
    /// first sequence number, for callers of `run_ready`.
    ready: VecDeque<(u64, Deferred)>,
    /// C10: batches waiting for their grace period, in batch order (each
    /// enters in the lock hold that takes it), taken by the reclaimer or
    /// (C12) by a caller: the state that completes it, the batch's first
    /// sequence number, when it was taken.
    waiting: VecDeque<(GpState, u64, std::time::Instant, Vec<Deferred>)>,
    /// The reclaimer sleeps with no timeout: only a notification wakes it.
    reclaimer_idle: bool,
    /// C12: when the oldest callback in `pending` was queued.
    pending_since: Option<std::time::Instant>,
    /// C6: each batch put in `ready`, in order, and when; records of
    /// batches no longer in `ready` are dropped lazily.
    readied: VecDeque<(u64, std::time::Instant)>,
    /// Callbacks that have run; `enqueued - run` is the backlog (C3).
    run: u64,
    barrier_waiters: usize,
    shutdown: bool,
    dead: bool,
    reclaimer: Option<JoinHandle<()>>,
}

impl QueueState {
    fn watermark(&self) -> u64 {
        self.in_flight.iter().map(|b| b.0).min().unwrap_or(self.taken)
    }

    fn take_batch(&mut self) -> (u64, Vec<Deferred>) {
        let start = self.taken;
        self.taken = self.enqueued;
        self.pending_since = None;
        // An empty batch is not in flight: nothing would ever finish it,
        // and a later batch would have the same start (C2).
        if !self.pending.is_empty() {
            self.in_flight.push((start, self.pending.len()));
        }
        // C9: the next batch grows into the spare's memory, not a new one.
        let next = std::mem::take(&mut self.spare);
        (start, std::mem::replace(&mut self.pending, next))
    }

    /// C9: keeps `v` (emptied) as the spare if it is the larger one, and
    /// returns the one not kept, for the caller to drop after unlocking.
    fn recycle(&mut self, v: Vec<Deferred>) -> Vec<Deferred> {
        debug_assert!(v.is_empty());
        if v.capacity() > self.spare.capacity() { std::mem::replace(&mut self.spare, v) } else { v }
    }

    /// C6: how many callbacks at the front of `ready` belong to batches
    /// that became ready at least `delay` ago (`ready` is in batch order:
    /// only `promote` adds to it, a batch at a time, from the front of
    /// `waiting`, where every batch enters in the lock hold that takes
    /// it: C10, C12).
    fn due(&mut self, delay: std::time::Duration) -> usize {
        let front = self.ready.front().map(|r| r.0);
        while self.readied.front().is_some_and(|r| front.is_none_or(|f| r.0 < f)) {
            self.readied.pop_front();
        }
        let cutoff = self.readied.iter().take_while(|r| sync::has_passed(r.1, delay)).last().map(|r| r.0);
        cutoff.map_or(0, |c| self.ready.partition_point(|r| r.0 <= c))
    }

    /// C6: how long until the oldest batch in `ready` is due (`due`).
    fn until_due(&self, delay: std::time::Duration) -> Option<std::time::Duration> {
        let front = self.ready.front()?.0;
        let t = self.readied.iter().find(|r| r.0 >= front)?.1;
        Some(delay.saturating_sub(t.elapsed()))
    }

    /// Moves the first `n` callbacks of `ready` into `out` (C6), which the
    /// caller sized before taking the lock (C9).
    fn take_ready(&mut self, n: usize, hint: &AtomicU64, out: &mut Vec<(u64, Deferred)>) {
        out.extend(self.ready.drain(..n));
        hint.store(self.ready.len() as u64, Ordering::Relaxed);
    }

    /// C10: moves every waiting batch whose grace period is complete (all
    /// of them with `force`: the domain is shutting down) to `ready`, and
    /// the emptied vectors it does not keep to `unused` (sized by the
    /// caller before locking, C9). Keeps `help_at` up to date.
    fn promote(&mut self, d: &DomainInner, force: bool, unused: &mut Vec<Vec<Deferred>>) {
        while self.waiting.front().is_some_and(|w| force || d.poll_state(w.0)) {
            let (_, start, _, mut batch) = self.waiting.pop_front().expect("checked above");
            self.ready.extend(batch.drain(..).map(|cb| (start, cb)));
            self.readied.push_back((start, std::time::Instant::now()));
            unused.push(self.recycle(batch));
        }
        d.callbacks.ready_hint.store(self.ready.len() as u64, Ordering::Relaxed);
        self.set_help_at(d);
    }

    /// C10: callers may help from `ready_delay` after the oldest waiting
    /// batch was taken (never, with none waiting).
    fn set_help_at(&self, d: &DomainInner) {
        let q = &d.callbacks;
        let at = self.waiting.front().map_or(u64::MAX, |w| {
            let taken = w.2.saturating_duration_since(q.epoch).as_nanos() as u64;
            taken.saturating_add(d.config.ready_delay.as_nanos() as u64)
        });
        q.help_at.store(at, Ordering::Relaxed);
    }

    /// C12: whether callers may take the pending callbacks as a batch:
    /// none waits, and the reclaimer is `batch_delay + ready_delay` late.
    fn late_to_take(&self, d: &DomainInner) -> bool {
        self.waiting.is_empty()
            && self
                .pending_since
                .is_some_and(|t| sync::has_passed(t, d.config.batch_delay + d.config.ready_delay))
    }

    /// C12: takes the pending callbacks as a batch and leaves it waiting
    /// for its grace period, for callers (C10) or the reclaimer to finish.
    fn take_late(&mut self, d: &DomainInner) {
        let (start, batch) = self.take_batch();
        // ORDERING: `get_state` fences after the callbacks' unlinking
        // stores, which all came before their `call` (grace.rs P2).
        let state = d.get_state();
        self.waiting.push_back((state, start, std::time::Instant::now(), batch));
        self.set_help_at(d);
        d.stats.caller_takes.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts `n` callbacks of the batch `start` as run (C2, C6).
    fn finish(&mut self, start: u64, n: usize) {
        if let Some(i) = self.in_flight.iter().position(|b| b.0 == start) {
            self.in_flight[i].1 -= n;
            if self.in_flight[i].1 == 0 {
                self.in_flight.swap_remove(i);
            }
        }
        self.run += n as u64;
    }
}

/// A domain's callback queue.
pub(crate) struct CallbackQueue {
    state: Mutex<QueueState>,
    /// The reclaimer sleeps here.
    work: Condvar,
    /// Barrier waiters sleep here.
    finished: Condvar,
    /// C6: `ready`'s length, read without the lock by `run_ready`, so that
    /// a caller with nothing to run takes no lock (a stale value only
    /// defers a bite to the next call).
    ready_hint: AtomicU64,
    /// C6: some thread has called `run_ready` (set once, never cleared).
    callers_run: AtomicBool,
    /// C10: when callers may next try to finish a waiting batch's grace
    /// period, in ns since `epoch` (`u64::MAX`: none waits).
    help_at: AtomicU64,
    epoch: std::time::Instant,
}

impl std::fmt::Debug for CallbackQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CallbackQueue").finish_non_exhaustive()
    }
}

impl CallbackQueue {
    pub(crate) fn new() -> Self {
        Self {
            state: Mutex::new(QueueState::default()),
            work: Condvar::new(),
            finished: Condvar::new(),
            ready_hint: AtomicU64::new(0),
            callers_run: AtomicBool::new(false),
            help_at: AtomicU64::new(u64::MAX),
            epoch: std::time::Instant::now(),
        }
    }
}

/// Whether this thread may wait for a grace period of `d` (C3, P4).
fn may_wait(d: &DomainInner) -> bool {
    reader::nesting_in(d) == 0 && !in_callback_of(d.id())
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
    if st.pending.is_empty() {
        // C12: a clock read per batch, not per callback.
        st.pending_since = Some(std::time::Instant::now());
    }
    st.pending.push(cb);
    st.enqueued += 1;
    // C12: every `LATE_CHECK`th callback of a batch (a clock read), the
    // caller takes the batch if the reclaimer is late to.
    if st.pending.len() % LATE_CHECK == 0
        && d.callbacks.callers_run.load(Ordering::Relaxed)
        && st.late_to_take(d)
    {
        st.take_late(d);
    }
    d.stats.callbacks_queued.fetch_add(1, Ordering::Relaxed);
    let backlog = st.enqueued - st.run;
    d.stats.callbacks_pending_max.fetch_max(backlog, Ordering::Relaxed);
    if st.reclaimer.is_none() && !st.shutdown {
        let dd = d.clone();
        st.reclaimer = Some(thread::spawn(move || reclaimer(dd)));
    }
    if backlog > d.config.callback_limit as u64 && !st.pending.is_empty() && may_wait(d) {
        // C3: help instead of letting the queue grow (unless C12 just
        // took what was pending).
        let (start, batch) = st.take_batch();
        drop(st);
        d.stats.helped_batches.fetch_add(1, Ordering::Relaxed);
        run_batch(d, start, batch, true);
        return;
    }
    // Wake the reclaimer only if nothing else will: a timed wait ends by
    // itself, and a wakeup costs the caller its CPU as often as not (the
    // woken thread preempts it).
    if (st.pending.len() == 1 && st.reclaimer_idle) || backlog > d.config.callback_limit as u64 / 2 {
        q.work.notify_one();
    }
}

/// A batch's grace period: expedited, or waiting for readers without
/// yielding (grace.rs P6). Only the reclaimer waits in the second kind
/// (callers that help, C3, expedite), and shares it with nobody else.
fn batch_grace_period(d: &DomainInner, expedite: bool) {
    d.synchronize_waiting(if expedite { Wait::Expedited } else { Wait::Background });
}

/// C10: takes the pending callbacks as a batch and waits for its grace
/// period (not expedited: an urgent batch is run by `run_batch`) where
/// callers can see it and finish it if this thread is slow
/// to; then leaves it in `ready` (C6), from which a barrier or shutdown
/// has the reclaimer run it. The batch enters `waiting` in the lock hold
/// that takes it, so `waiting` (and `ready` after it) stays in batch
/// order whatever callers take meanwhile (C12).
fn wait_in_queue<'a>(d: &'a DomainInner, mut st: crate::sync::MutexGuard<'a, QueueState>) {
    let (start, batch) = st.take_batch();
    // ORDERING: `get_state` fences after the callbacks' unlinking stores,
    // which all came before their `call` (grace.rs P2).
    let state = d.get_state();
    st.waiting.push_back((state, start, std::time::Instant::now(), batch));
    st.set_help_at(d);
    let mut unused = Vec::with_capacity(2);
    if !st.shutdown {
        drop(st);
        batch_grace_period(d, false);
        st = d.callbacks.state.lock();
    }
    let force = st.shutdown;
    st.promote(d, force, &mut unused);
    drop(st);
    drop(unused); // C9: freed with the lock released
}

/// Waits for a grace period (unless the domain is gone), then runs `batch`.
fn run_batch(d: &DomainInner, start: u64, mut batch: Vec<Deferred>, expedite: bool) {
    if !d.callbacks.state.lock().shutdown {
        batch_grace_period(d, expedite);
    }
    let n = batch.len();
    run_callbacks(d, batch.drain(..));
    let mut st = d.callbacks.state.lock();
    st.finish(start, n);
    // ORDERING: Release: a stats reader that sees the count sees the effects.
    d.stats.callbacks_run.fetch_add(n as u64, Ordering::Release);
    notify_barriers(&st, &d.callbacks);
    let unused = st.recycle(batch);
    drop(st);
    drop(unused);
}

/// Wakes the `barrier` callers, if any, after callbacks finished (C2).
/// Called with the state locked, which is how a barrier counted itself in
/// `barrier_waiters` before it waits: no wakeup is lost. Why only then:
/// a notification is a `futex` system call even with no one waiting, and
/// callers run callbacks after most mm calls (C6): a 2 s run of the lab's
/// proc-vs-map made 172,495 futex calls, 10,725 with this check (`perf stat
/// -e syscalls:sys_enter_futex`).
fn notify_barriers(st: &QueueState, q: &CallbackQueue) {
    if st.barrier_waiters > 0 {
        q.finished.notify_all();
    }
}

/// Runs callbacks whose grace period has passed, outside the queue's lock.
fn run_callbacks(d: &DomainInner, cbs: impl IntoIterator<Item = Deferred>) {
    RUNNING_CALLBACKS.with(|r| r.borrow_mut().push(d.id()));
    for cb in cbs {
        if catch_unwind(AssertUnwindSafe(|| cb.run())).is_err() {
            d.stats.callbacks_panicked.fetch_add(1, Ordering::Relaxed);
            eprintln!("rcuvm-rcu: an RCU callback panicked; the panic was caught");
        }
    }
    // Each callback's panic was caught above, so this always runs.
    RUNNING_CALLBACKS.with(|r| r.borrow_mut().pop());
}

/// Runs callbacks taken from `ready` and counts their batches' progress.
fn run_taken(d: &DomainInner, taken: &mut Vec<(u64, Deferred)>) {
    // The batches, in order (C1: `taken` is a run of the queue), with how
    // many of their callbacks were taken; C11: on the stack, for the few
    // batches a bite spans.
    let mut batches: smallvec::SmallVec<[(u64, usize); 8]> = smallvec::SmallVec::new();
    for (start, _) in taken.iter() {
        match batches.last_mut() {
            Some(b) if b.0 == *start => b.1 += 1,
            _ => batches.push((*start, 1)),
        }
    }
    let n = taken.len();
    run_callbacks(d, taken.drain(..).map(|(_, cb)| cb));
    let mut st = d.callbacks.state.lock();
    for (start, k) in batches {
        st.finish(start, k);
    }
    // ORDERING: as in `run_batch`.
    d.stats.callbacks_run.fetch_add(n as u64, Ordering::Release);
    notify_barriers(&st, &d.callbacks);
}

/// Runs up to `max` ready callbacks, oldest first, on this thread (C6);
/// returns how many ran.
pub(crate) fn run_ready(d: &DomainInner, max: usize) -> usize {
    if !may_wait(d) {
        return 0;
    }
    let q = &d.callbacks;
    if q.callers_run.load(Ordering::Relaxed) && q.ready_hint.load(Ordering::Relaxed) == 0 && !help(d) {
        return 0;
    }
    // A reclaimer that misses this store runs its next batch itself.
    q.callers_run.store(true, Ordering::Relaxed);
    // C9: sized before the lock is taken (a stale hint at worst grows it
    // under the lock, rarely).
    let hint = q.ready_hint.load(Ordering::Relaxed) as usize;
    // `try_with`: a thread-local destructor may call this after `BITE`
    // is gone; it then works in a vector of its own.
    let mut bite = BITE.try_with(Cell::take).unwrap_or_default();
    bite.reserve(max.min(hint.max(1)));
    let mut st = q.state.lock();
    let n = max.min(st.ready.len());
    if n > 0 {
        st.take_ready(n, &q.ready_hint, &mut bite);
        drop(st);
        run_taken(d, &mut bite);
        d.stats.callbacks_run_by_callers.fetch_add(n as u64, Ordering::Relaxed);
    } else {
        drop(st);
    }
    // A vector grown for an unusually large `max` is not kept.
    if bite.capacity() <= BITE_KEEP {
        let _ = BITE.try_with(|b| b.set(bite));
    }
    n
}

/// C10: finishes the grace period of the oldest waiting batch if it is
/// late, without blocking; returns whether a batch became ready.
fn help(d: &DomainInner) -> bool {
    let q = &d.callbacks;
    let at = q.help_at.load(Ordering::Relaxed);
    if at == u64::MAX {
        return false; // none waits: no clock read
    }
    let now = sync::elapsed_ns(q.epoch);
    // At most one try per `ready_delay` (the try costs a membarrier and a
    // scan of the reader slots), whoever wins this swap.
    let next = now.saturating_add(d.config.ready_delay.as_nanos() as u64);
    if now < at || q.help_at.compare_exchange(at, next, Ordering::Relaxed, Ordering::Relaxed).is_err() {
        return false;
    }
    let Some(state) = q.state.lock().waiting.front().map(|w| w.0) else { return false };
    if !d.try_grace_period(state) {
        return false;
    }
    let mut unused = Vec::with_capacity(2);
    let mut st = q.state.lock();
    st.promote(d, false, &mut unused);
    let ready = !st.ready.is_empty();
    drop(st);
    drop(unused);
    ready
}

/// The reclaimer thread's loop: one batch per grace period, until shutdown
/// with an empty queue.
fn reclaimer(d: Arc<DomainInner>) {
    RECLAIMER_OF.with(|r| r.set(d.id()));
    // C9: the reclaimer's vector for ready callbacks, kept across batches.
    let mut left: Vec<(u64, Deferred)> = Vec::new();
    loop {
        let mut st = d.callbacks.state.lock();
        let (delay, ready_delay) = (d.config.batch_delay, d.config.ready_delay);
        let urgent = |st: &QueueState| {
            st.shutdown || st.barrier_waiters > 0 || st.enqueued - st.run > d.config.callback_limit as u64 / 2
        };
        if st.pending.is_empty() && !st.shutdown {
            if st.ready.is_empty() && st.waiting.is_empty() {
                st.reclaimer_idle = true;
                // C12: a caller may take what woke this thread before it
                // runs, and leave it waiting, which is work too.
                while st.pending.is_empty() && st.waiting.is_empty() && !st.shutdown {
                    st = d.callbacks.work.wait(st);
                }
                st.reclaimer_idle = false;
            } else if !urgent(&st) {
                // C6: callers have until the oldest ready batch is due;
                // C12: and `ready_delay` to finish the grace period of a
                // batch they took.
                let w = st.until_due(ready_delay).unwrap_or(ready_delay);
                if !w.is_zero() {
                    st = d.callbacks.work.wait_timeout(st, w);
                }
            }
        }
        if !st.pending.is_empty() && !delay.is_zero() && !urgent(&st) {
            // C5: let a batch gather before paying for a grace period,
            // unless someone waits (barrier, drop) or the backlog is half
            // full; but no later than a ready batch falls due (C6).
            let w = st.until_due(ready_delay).map_or(delay, |u| u.min(delay));
            if !w.is_zero() {
                st = d.callbacks.work.wait_timeout(st, w);
            }
        }
        let n = if urgent(&st) { st.ready.len() } else { st.due(ready_delay) };
        if n > 0 {
            // C6: what callers left of the batches that are due (all of
            // it if someone waits): run it. C9: the vector for them is
            // made with the lock released.
            if left.capacity() < n {
                drop(st);
                left.reserve(n);
                continue;
            }
            st.take_ready(n, &d.callbacks.ready_hint, &mut left);
            drop(st);
            run_taken(&d, &mut left);
            continue;
        }
        if st.pending.is_empty() && !st.waiting.is_empty() {
            // C12: batches callers took and have not finished: finish
            // their grace period (they are in `waiting` in order, and a
            // grace period begun now completes every state taken before),
            // or at shutdown hand them to the runs above.
            let expedite = urgent(&st);
            let done = st.waiting.front().is_some_and(|w| d.poll_state(w.0));
            if !st.shutdown && !done {
                drop(st);
                batch_grace_period(&d, expedite);
                st = d.callbacks.state.lock();
            }
            let mut unused = Vec::with_capacity(st.waiting.len());
            let force = st.shutdown;
            st.promote(&d, force, &mut unused);
            drop(st);
            drop(unused); // C9: freed with the lock released
            continue;
        }
        if st.pending.is_empty() {
            if st.shutdown {
                return;
            }
            continue;
        }
        let backlog = st.enqueued - st.run;
        let expedite = st.barrier_waiters > 0 || backlog > d.config.callback_limit as u64 / 2;
        if d.callbacks.callers_run.load(Ordering::Relaxed) && !expedite {
            wait_in_queue(&d, st);
        } else {
            let (start, batch) = st.take_batch();
            drop(st);
            run_batch(&d, start, batch, expedite);
        }
    }
}

/// `rcu_barrier()`: waits until every callback queued before the call ran (C2).
pub(crate) fn barrier(d: &DomainInner) {
    d.assert_outside_read_section("barrier()");
    assert!(
        !in_callback_of(d.id()),
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
    // C13: on the reclaimer itself (a callback dropped the last handle),
    // there is nothing to join: its loop ends when this callback returns
    // and it finds `shutdown`; the rest is done here, now.
    let on_reclaimer = RECLAIMER_OF.with(|r| r.get()) == d.id();
    if let Some(h) = handle.filter(|_| !on_reclaimer) {
        // A panic escaping the reclaimer is already reported by the runtime.
        let _ = h.join();
    }
    // C12: a batch a caller took after the reclaimer left (and what
    // callers promoted of it) runs here, before what is pending.
    let mut left = Vec::new();
    let (start, batch) = {
        let mut st = d.callbacks.state.lock();
        st.dead = true;
        let mut unused = Vec::new();
        st.promote(d, true, &mut unused);
        let n = st.ready.len();
        st.take_ready(n, &d.callbacks.ready_hint, &mut left);
        st.take_batch()
    };
    if !left.is_empty() {
        run_taken(d, &mut left);
    }
    run_batch(d, start, batch, false);
}
