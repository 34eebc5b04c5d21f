//! Grace periods: waiting until every pre-existing reader has left.
//!
//! # Owns
//! [`Share`], the state that lets concurrent callers share one grace period,
//! and the scan that waits for readers.
//!
//! # Invariants
//! - P1. A grace period with counter `G` begins with `gp.fetch_add(GP_UNIT)`
//!   (which yields `G`) and the writer fence, then waits until no registered
//!   slot holds `nest != 0 && snapshot < G` (reader.rs R3). A reader that was
//!   inside a section when `synchronize` was called either has a visible
//!   counter with an older snapshot (and is waited for) or its counter store
//!   comes after the fence, so it cannot see what was unlinked before (B2).
//! - P2. `gp_completed` is the largest `G` whose wait has finished; it only
//!   grows. A state `s` taken by `get_state` is complete once
//!   `gp_completed >= s + GP_UNIT`.
//! - P3. Sharing: a caller is satisfied by a grace period that *started*
//!   after it called. `Share` counts completed grace periods; a caller that
//!   arrives while one runs needs the one after (`completed + 2`).
//! - P4. No grace period may be waited for from inside a read-side section of
//!   the same domain: it would wait for itself. That panics instead.
//! - P5. A caller that must not wait can still finish a grace period for a
//!   state `s`: [`try_grace_period`](DomainInner::try_grace_period) joins
//!   the newest grace period begun after `s` was taken (the counter is past
//!   `s` only through such a begin) or begins one, fences, and scans every
//!   slot once; if no slot blocks it, that grace period is complete (P2)
//!   for everyone, whoever began it. One begun by the reclaimer that then
//!   lost its CPU before its own fence is still sound: the caller fences
//!   after loading the counter, which is what P1 asks of whoever scans.
//!   (A first version joined "the counter as it is", which a fresh
//!   domain's counter never begun is not: the unit test below caught it
//!   answering "complete" with a reader inside. `poll_state` was not
//!   fooled, but no state ever completed that way.)
//! - P6. The reclaimer's grace periods wait for a reader by spinning
//!   briefly and then sleeping (16 µs doubling to 1 ms), never by
//!   yielding; `synchronize` yields 16 times before it sleeps, which
//!   ends a wait soonest when a CPU is idle. Why: with every CPU busy
//!   (rcuvm's proc-vs-map: a writer and a maps reader, each on its own
//!   CPU), a yield gave the reclaimer's CPU to the other thread for the
//!   rest of its time slice: the reclaimer's grace periods took 12 µs at
//!   the median and 4.0 ms at p99 (a scheduler tick); sleeping, a woken
//!   reclaimer preempts sooner: p99 0.12–0.18 ms, and it ran 45% more
//!   of them (three runs each, a scratch build printing the domain's
//!   statistics). Its grace periods are shared with no `synchronize`
//!   caller (P3 holds within each kind), which would otherwise wait at
//!   their pace.
//!
//! # Linux
//! `synchronize_rcu()`, `synchronize_rcu_expedited()`,
//! `get_state_synchronize_rcu()`, `poll_state_synchronize_rcu()`; urcu's
//! `wait_for_readers()` and its waiter queue for sharing.

use std::time::Instant;

use crate::domain::DomainInner;
use crate::membarrier;
use crate::reader::{self, GP_UNIT};
use crate::sync::{self, Condvar, Mutex, Ordering};

/// A grace-period cookie from [`Domain::get_state`](crate::Domain::get_state).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct GpState(pub(crate) u64);

/// Lets concurrent callers of one kind of grace period share it (P3).
#[derive(Debug)]
pub(crate) struct Share {
    state: Mutex<ShareState>,
    done: Condvar,
}

#[derive(Debug, Default)]
struct ShareState {
    completed: u64,
    running: bool,
}

impl Share {
    pub(crate) fn new() -> Self {
        Self { state: Mutex::new(ShareState::default()), done: Condvar::new() }
    }

    /// Returns once a call of `run` that started after this call finished.
    /// Returns whether this caller ran it itself.
    fn run_shared(&self, run: impl Fn()) -> bool {
        let mut st = self.state.lock();
        // P3: the one running now may have started before we were called.
        let target = st.completed + if st.running { 2 } else { 1 };
        let mut led = false;
        while st.completed < target {
            if st.running {
                st = self.done.wait(st);
            } else {
                st.running = true;
                drop(st);
                run();
                led = true;
                st = self.state.lock();
                st.completed += 1;
                st.running = false;
                self.done.notify_all();
            }
        }
        led
    }
}

/// How a grace period waits for a reader to leave, once spinning has not
/// been enough.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Wait {
    /// Yields, then sleeps (`synchronize`).
    Normal,
    /// Yields only (`synchronize_expedited`).
    Expedited,
    /// Sleeps only (P6: the reclaimer's grace periods).
    Background,
}

/// Waits politely (normal), eagerly (expedited) or without yielding
/// (background) for a reader to leave.
struct Backoff {
    step: u32,
    wait: Wait,
}

impl Backoff {
    fn snooze(&mut self) {
        self.step = self.step.saturating_add(1);
        if self.step <= 8 {
            for _ in 0..(1u32 << self.step) {
                sync::spin_loop();
            }
        } else if self.wait == Wait::Expedited || (self.wait == Wait::Normal && self.step <= 24) {
            sync::thread::yield_now();
        } else {
            // 16 µs doubling up to 1 ms: the normal flavour gives the CPU
            // back to readers instead of burning it.
            let first = if self.wait == Wait::Background { 9 } else { 25 };
            let exp = (self.step - first).min(6);
            sync::sleep_us(16 << exp);
        }
    }
}

impl DomainInner {
    /// One grace period (P1). Returns its counter `G`.
    fn grace_period(&self, wait: Wait) -> u64 {
        let expedited = wait == Wait::Expedited;
        let t0 = Instant::now();
        // ORDERING: SeqCst RMW: the caller's unlinking stores precede it in
        // program order (or through the `Share` mutex for waiters); readers
        // that load the new value with Acquire see them (reader.rs `lock`).
        let g = self.read_side.gp.fetch_add(GP_UNIT, Ordering::SeqCst) + GP_UNIT;
        membarrier::writer_fence();
        for slot in self.registry.snapshot().iter() {
            let mut b = Backoff { step: 0, wait };
            while slot.blocks(g) {
                b.snooze();
            }
        }
        // ORDERING: Release so that `poll_state`'s Acquire load also sees the
        // quiescent states observed above (P2).
        self.gp_completed.fetch_max(g, Ordering::AcqRel);
        self.stats.record_gp(expedited, t0.elapsed());
        g
    }

    /// Panics if the calling thread is inside a section of this domain (P4).
    pub(crate) fn assert_outside_read_section(&self, what: &str) {
        if reader::nesting_in(self) != 0 {
            panic!(
                "rcuvm-rcu: {what} called inside a read-side section of the same domain \
                 (domain {}); it would wait for itself forever. Drop the Guard first.",
                self.id()
            );
        }
    }

    /// `synchronize` / `synchronize_expedited` without the P4 check.
    pub(crate) fn synchronize_unchecked(&self, expedited: bool) {
        self.synchronize_waiting(if expedited { Wait::Expedited } else { Wait::Normal });
    }

    /// As `synchronize_unchecked`, waiting for readers as `wait` says
    /// (P6). Each kind is shared only among its own callers: a caller of
    /// `synchronize` that joined the reclaimer's grace period would wait
    /// at its sleeping pace.
    pub(crate) fn synchronize_waiting(&self, wait: Wait) {
        let share = match wait {
            Wait::Normal => &self.share_normal,
            Wait::Expedited => &self.share_expedited,
            Wait::Background => &self.share_background,
        };
        share.run_shared(|| {
            self.grace_period(wait);
        });
    }

    /// P5: one attempt, that never blocks, at a grace period that completes
    /// `s` (a state taken earlier). Returns whether `s` is complete now.
    /// Callers: callback.rs C10, and users through `Domain::try_complete`.
    pub(crate) fn try_grace_period(&self, s: GpState) -> bool {
        if self.poll_state(s) {
            return true;
        }
        // The counter passes `s` only through grace periods begun after
        // `s` was taken: join the newest, or begin one.
        let need = s.0 + GP_UNIT;
        let mut g = self.read_side.gp.load(Ordering::SeqCst);
        if g < need {
            // ORDERING: SeqCst RMW, as in `grace_period` (P1).
            g = self.read_side.gp.fetch_add(GP_UNIT, Ordering::SeqCst) + GP_UNIT;
        }
        // P1, P5: the fence after the counter (this thread's load or bump).
        membarrier::writer_fence();
        for slot in self.registry.snapshot().iter() {
            if slot.blocks(g) {
                return false;
            }
        }
        // ORDERING: as in `grace_period`.
        self.gp_completed.fetch_max(g, Ordering::AcqRel);
        self.stats.caller_gps.fetch_add(1, Ordering::Relaxed);
        true
    }

    /// A cookie for [`poll_state`](Self::poll_state) (P2).
    pub(crate) fn get_state(&self) -> GpState {
        // ORDERING: the fence orders the caller's unlinking stores (an
        // AcqRel swap is not enough) before the counter load, so the cookie
        // is never older than a grace period that finished before the
        // unlink; without it a stale cookie lets `poll_state` pass while a
        // reader still holds the value (found by the loom model
        // `poll_state_waits_for_reader`). Linux: the `smp_mb()` in
        // `get_state_synchronize_rcu()`.
        sync::fence(Ordering::SeqCst);
        GpState(self.read_side.gp.load(Ordering::SeqCst))
    }

    /// Whether a full grace period has elapsed since `s` was taken (P2).
    pub(crate) fn poll_state(&self, s: GpState) -> bool {
        // ORDERING: Acquire pairs with the AcqRel fetch_max in `grace_period`.
        self.gp_completed.load(Ordering::Acquire) >= s.0 + GP_UNIT
    }
}

#[cfg(all(test, not(rcuvm_loom)))]
mod tests {
    use crate::Domain;

    /// P5: a try never waits, completes nothing while a reader that predates
    /// it is inside, and completes a grace period (for every state taken
    /// before it) once that reader left.
    #[test]
    fn try_grace_period_waits_for_no_one_and_completes_only_when_readers_left() {
        let d = Domain::new();
        let inner = &d.inner;
        let state = inner.get_state();
        let (entered, leave) = (std::sync::Barrier::new(2), std::sync::Barrier::new(2));
        std::thread::scope(|s| {
            s.spawn(|| {
                let _g = d.read();
                entered.wait();
                leave.wait();
            });
            entered.wait();
            for _ in 0..3 {
                assert!(
                    !inner.try_grace_period(state),
                    "completed while a reader that predates it is inside"
                );
                assert!(!inner.poll_state(state));
            }
            leave.wait();
        });
        assert!(inner.try_grace_period(state));
        assert!(inner.poll_state(state));
        assert_eq!(d.stats().caller_gps, 1);
    }
}
