//! Loom models of the grace-period protocol: reader counters (reader.rs
//! `lock`/`unlock`), the scan (grace.rs `grace_period`), sharing between
//! concurrent synchronizers (grace.rs `Share`) and deferred freeing
//! (callback.rs).
//!
//! Run with `ci/loom.sh`, i.e.
//! `RUSTFLAGS="--cfg rcuvm_loom" LOOM_MAX_PREEMPTIONS=2 CARGO_TARGET_DIR=target/loom \
//!  cargo test -p rcuvm-rcu --release --test loom_rcu`.
//!
//! How a model sees a use-after-free: the protected value is a [`Canary`]
//! whose word lives in a `loom::cell::UnsafeCell`. Readers read it under
//! their guard; whoever reclaims it writes a poison value into it first
//! (explicitly after a synchronize, in `Drop` for a retired value). If the
//! reclaimer's write is not ordered after every reader's read by
//! happens-before, loom reports a causality violation (and the readers'
//! value checks catch the schedules where the poison is already visible).
//! Each model also counts, across its iterations, that the interesting
//! event (a reader that really held the old value) was explored at all.

#![cfg(rcuvm_loom)]

use std::sync::atomic::{
    AtomicBool as StdAtomicBool, AtomicUsize as StdAtomicUsize, Ordering as StdOrdering,
};
use std::time::Instant;

use loom::cell::UnsafeCell;
use loom::sync::Arc;
use loom::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use loom::thread;
use rcuvm_rcu::{Domain, RcuPtr};

/// The canary's value while it is reachable.
const LIVE: u64 = 0x1111;
/// What reclaiming writes into it, standing for the free.
const POISON: u64 = 0xdead;

/// A protected value that notices being read after (or concurrently with)
/// its reclamation. `repr(C)` and the padding keep the checked word away
/// from the bytes an allocator reuses first, should a broken protocol (in a
/// mutation check) really free it under a reader.
#[repr(C)]
struct Canary {
    _pad: [u64; 4],
    word: UnsafeCell<u64>,
    drops: Arc<AtomicUsize>,
}

// SAFETY: the only interior mutability is `word`, a loom cell: any
// unsynchronised pair of accesses to it is reported by loom, which is what
// these models check.
unsafe impl Sync for Canary {}

impl Canary {
    fn new(drops: &Arc<AtomicUsize>) -> Box<Self> {
        Box::new(Self { _pad: [0; 4], word: UnsafeCell::new(LIVE), drops: drops.clone() })
    }

    /// A reader's use: the value must still be intact.
    fn check(&self) {
        // SAFETY: loom checks that this read does not race with `kill`.
        let w = self.word.with(|p| unsafe { *p });
        assert_eq!(w, LIVE, "a reader saw a reclaimed value");
    }

    /// What freeing does to the memory; must come after every reader's use.
    fn kill(&self) {
        // SAFETY: loom checks that this write does not race with `check`.
        self.word.with_mut(|p| unsafe { *p = POISON });
    }
}

impl Drop for Canary {
    fn drop(&mut self) {
        // While unwinding from a failed check, a second report would abort.
        if !std::thread::panicking() {
            self.kill();
        }
        self.drops.fetch_add(1, SeqCst);
    }
}

/// Runs `f` under loom with an explicit preemption bound (the
/// `LOOM_MAX_PREEMPTIONS` environment variable overrides it) and reports the
/// time taken.
fn check<F>(name: &str, preemptions: usize, f: F)
where
    F: Fn() + Send + Sync + 'static,
{
    let mut b = loom::model::Builder::new();
    if b.preemption_bound.is_none() {
        b.preemption_bound = Some(preemptions);
    }
    let iterations = std::sync::Arc::new(StdAtomicUsize::new(0));
    let n = iterations.clone();
    let t0 = Instant::now();
    b.check(move || {
        n.fetch_add(1, StdOrdering::Relaxed);
        f();
    });
    eprintln!(
        "loom model {name}: {} iterations in {:.2?} (preemption bound {:?})",
        iterations.load(StdOrdering::Relaxed),
        t0.elapsed(),
        b.preemption_bound
    );
}

/// A reader's use of a value it loaded: check it, let the other threads run
/// while holding it (a loom scheduling point; without one, loom never runs a
/// writer inside this window), and check it again.
fn hold(v: &Canary, cov: &Coverage) {
    cov.set_holding(true);
    v.check();
    thread::yield_now();
    v.check();
    cov.set_holding(false);
}

/// A reader thread: one section in which it loads `p` and holds what it
/// found (`hold`).
fn spawn_reader(d: &Arc<Domain>, p: &Arc<RcuPtr<Canary>>, cov: &'static Coverage) -> thread::JoinHandle<()> {
    let (d, p) = (d.clone(), p.clone());
    thread::spawn(move || {
        let g = d.read();
        if let Some(v) = p.load(&g) {
            hold(v, cov);
        }
        drop(g);
    })
}

/// What a model's schedules covered, across its iterations. Plain std
/// atomics, which loom does not model: its threads run one at a time, so they
/// record the order in which the explored schedule ran the steps.
struct Coverage {
    /// A reader holds an old value now (reset at every iteration's start).
    holding: StdAtomicBool,
    /// Iterations in which a writer began waiting while a reader held the
    /// value it had unlinked: the event each model is about.
    overlapped: StdAtomicUsize,
}

impl Coverage {
    const fn new() -> Self {
        Self { holding: StdAtomicBool::new(false), overlapped: StdAtomicUsize::new(0) }
    }
    fn start_iteration(&self) {
        self.holding.store(false, StdOrdering::Relaxed);
    }
    fn set_holding(&self, holding: bool) {
        self.holding.store(holding, StdOrdering::Relaxed);
    }
    /// Called by a writer just before it waits for a grace period.
    fn writer_waits(&self) {
        if self.holding.load(StdOrdering::Relaxed) {
            self.overlapped.fetch_add(1, StdOrdering::Relaxed);
        }
    }
    /// Called by a writer once its wait returned: in the schedule's own order,
    /// no reader can still be holding what it unlinked.
    fn writer_done(&self) {
        assert!(
            !self.holding.load(StdOrdering::Relaxed),
            "a wait returned while a reader held the old value"
        );
    }
    fn assert_overlapped(&self, name: &str) {
        let n = self.overlapped.load(StdOrdering::Relaxed);
        assert!(n > 0, "{name}: no explored schedule had a writer wait while a reader held the old value");
        eprintln!("loom model {name}: {n} iterations had a writer wait on a reader holding the old value");
    }
}

// Checks that a reader inside a section when `synchronize` is called has left it when it returns.
#[test]
fn synchronize_waits_for_reader() {
    static COV: Coverage = Coverage::new();
    check("synchronize_waits_for_reader", 2, || {
        COV.start_iteration();
        let d = Arc::new(Domain::new());
        let drops = Arc::new(AtomicUsize::new(0));
        let p = Arc::new(RcuPtr::new(&d, Some(Canary::new(&drops))));
        let reader = spawn_reader(&d, &p, &COV);
        let unlinked = p.take().expect("only this thread unlinks");
        COV.writer_waits();
        let old = unlinked.synchronize();
        COV.writer_done();
        old.kill();
        reader.join().unwrap();
        drop(old);
        assert_eq!(drops.load(SeqCst), 1);
    });
    COV.assert_overlapped("synchronize_waits_for_reader");
}

// Checks that a retired value is never freed under a guard that may hold it, and is freed once by `barrier`.
#[test]
fn retire_never_frees_under_a_guard() {
    static COV: Coverage = Coverage::new();
    check("retire_never_frees_under_a_guard", 2, || {
        COV.start_iteration();
        let d = Arc::new(Domain::new());
        let drops = Arc::new(AtomicUsize::new(0));
        let p = Arc::new(RcuPtr::new(&d, Some(Canary::new(&drops))));
        let reader = spawn_reader(&d, &p, &COV);
        {
            let g = d.read();
            let v = p.load(&g).expect("only this thread unlinks");
            // Retiring from inside a section is allowed; it starts the
            // reclaimer thread, whose grace period must wait for `g` (and
            // for the other reader if it holds the value too).
            COV.writer_waits();
            p.take().expect("only this thread unlinks").retire();
            v.check();
            thread::yield_now();
            v.check();
            drop(g);
        }
        d.barrier();
        COV.writer_done();
        assert_eq!(drops.load(SeqCst), 1, "barrier returned before the retired value was freed");
        reader.join().unwrap();
        // A race found inside the callback panics there, and the reclaimer
        // catches callback panics: make it fail the model here.
        assert_eq!(d.stats().callbacks_panicked, 0, "the retired value was freed under a reader");
        drop(p);
        drop(d); // the last handle: shuts the reclaimer down.
        assert_eq!(drops.load(SeqCst), 1);
    });
    COV.assert_overlapped("retire_never_frees_under_a_guard");
}

// Checks that a callback a caller runs with `run_ready` (callback.rs C6)
// never frees under a guard either, and that `barrier` still waits for it.
#[test]
fn caller_run_callbacks_never_free_under_a_guard() {
    static COV: Coverage = Coverage::new();
    static BY_CALLER: StdAtomicUsize = StdAtomicUsize::new(0);
    static CALLER_GP: StdAtomicUsize = StdAtomicUsize::new(0);
    static CALLER_TAKE: StdAtomicUsize = StdAtomicUsize::new(0);
    check("caller_run_callbacks_never_free_under_a_guard", 2, || {
        COV.start_iteration();
        let d = Arc::new(Domain::new());
        // Callers run callbacks from now on: the reclaimer leaves them ready.
        assert_eq!(d.run_ready(8), 0);
        let drops = Arc::new(AtomicUsize::new(0));
        let p = Arc::new(RcuPtr::new(&d, Some(Canary::new(&drops))));
        let reader = spawn_reader(&d, &p, &COV);
        // A scheduling point, so that the reader may hold the value first.
        thread::yield_now();
        COV.writer_waits();
        p.take().expect("only this thread unlinks").retire();
        // A second callback: the caller takes the batch (callback.rs C12)
        // if the reclaimer has not taken the first yet.
        let ran = Arc::new(AtomicUsize::new(0));
        let r = ran.clone();
        d.call(move || {
            r.fetch_add(1, SeqCst);
        });
        for _ in 0..2 {
            d.run_ready(8);
            thread::yield_now();
        }
        d.barrier();
        COV.writer_done();
        assert_eq!(drops.load(SeqCst), 1, "barrier returned before the retired value was freed");
        assert_eq!(ran.load(SeqCst), 1, "barrier returned before the second callback ran");
        reader.join().unwrap();
        assert_eq!(d.stats().callbacks_panicked, 0, "the retired value was freed under a reader");
        if d.stats().callbacks_run_by_callers > 0 {
            BY_CALLER.fetch_add(1, StdOrdering::Relaxed);
        }
        // callback.rs C10: under loom every batch is late, so the caller
        // also tries to finish its grace period itself (grace.rs P5).
        if d.stats().caller_gps > 0 {
            CALLER_GP.fetch_add(1, StdOrdering::Relaxed);
        }
        // C12: the caller took the batch before the reclaimer did; the
        // barrier above then depended on a caller's `run_ready` or the
        // reclaimer finishing it.
        if d.stats().caller_takes > 0 {
            CALLER_TAKE.fetch_add(1, StdOrdering::Relaxed);
        }
        drop(p);
        drop(d);
        assert_eq!(drops.load(SeqCst), 1);
    });
    COV.assert_overlapped("caller_run_callbacks_never_free_under_a_guard");
    let n = BY_CALLER.load(StdOrdering::Relaxed);
    assert!(n > 0, "no explored schedule had the caller run the callback");
    let g = CALLER_GP.load(StdOrdering::Relaxed);
    assert!(g > 0, "no explored schedule had the caller finish a grace period");
    let t = CALLER_TAKE.load(StdOrdering::Relaxed);
    assert!(t > 0, "no explored schedule had the caller take the batch");
    eprintln!(
        "loom model caller_run_callbacks_never_free_under_a_guard: the caller ran it in {n} iterations, finished its grace period in {g}, took the batch in {t}"
    );
}

// Checks that dropping an inner guard leaves the section open: synchronize still waits for the outer.
#[test]
fn nesting_keeps_section_open() {
    static COV: Coverage = Coverage::new();
    check("nesting_keeps_section_open", 2, || {
        COV.start_iteration();
        let d = Arc::new(Domain::new());
        let drops = Arc::new(AtomicUsize::new(0));
        let p = Arc::new(RcuPtr::new(&d, Some(Canary::new(&drops))));
        let reader = {
            let (d, p) = (d.clone(), p.clone());
            thread::spawn(move || {
                let outer = d.read();
                let inner = d.read();
                let v = p.load(&outer);
                COV.set_holding(v.is_some());
                drop(inner);
                // Still inside `outer`: the value must not have been reclaimed.
                if let Some(v) = v {
                    hold(v, &COV);
                }
                drop(outer);
            })
        };
        let unlinked = p.take().expect("only this thread unlinks");
        COV.writer_waits();
        let old = unlinked.synchronize();
        COV.writer_done();
        old.kill();
        reader.join().unwrap();
        drop(old);
        assert_eq!(drops.load(SeqCst), 1);
    });
    COV.assert_overlapped("nesting_keeps_section_open");
}

// Checks that two concurrent synchronize calls both wait for a pre-existing reader, without deadlock.
#[test]
fn concurrent_synchronizers_share() {
    /// One per cell: a synchronize call must wait only for readers of its own.
    static COV: [Coverage; 2] = [Coverage::new(), Coverage::new()];
    /// Synchronize calls in flight, and iterations where both were at once.
    static IN_FLIGHT: StdAtomicUsize = StdAtomicUsize::new(0);
    static BOTH_IN_FLIGHT: StdAtomicUsize = StdAtomicUsize::new(0);
    fn unlink_and_synchronize(p: &RcuPtr<Canary>, cov: &Coverage) -> Box<Canary> {
        let unlinked = p.take().expect("only one thread unlinks each cell");
        cov.writer_waits();
        if IN_FLIGHT.fetch_add(1, StdOrdering::Relaxed) == 1 {
            BOTH_IN_FLIGHT.fetch_add(1, StdOrdering::Relaxed);
        }
        let old = unlinked.synchronize();
        IN_FLIGHT.fetch_sub(1, StdOrdering::Relaxed);
        cov.writer_done();
        old.kill();
        old
    }
    fn read(v: Option<&Canary>, cov: &Coverage) {
        if let Some(v) = v {
            cov.set_holding(true);
            v.check();
        }
    }
    fn reread(v: Option<&Canary>) {
        if let Some(v) = v {
            v.check();
        }
    }
    check("concurrent_synchronizers_share", 2, || {
        COV.iter().for_each(Coverage::start_iteration);
        IN_FLIGHT.store(0, StdOrdering::Relaxed);
        let d = Arc::new(Domain::new());
        let drops = Arc::new(AtomicUsize::new(0));
        let p1 = Arc::new(RcuPtr::new(&d, Some(Canary::new(&drops))));
        let p2 = Arc::new(RcuPtr::new(&d, Some(Canary::new(&drops))));
        let reader = {
            let (d, p1, p2) = (d.clone(), p1.clone(), p2.clone());
            thread::spawn(move || {
                let g = d.read();
                let (a, b) = (p1.load(&g), p2.load(&g));
                read(a, &COV[0]);
                read(b, &COV[1]);
                thread::yield_now();
                reread(a);
                reread(b);
                COV.iter().for_each(|c| c.set_holding(false));
                drop(g);
            })
        };
        let other = {
            let p2 = p2.clone();
            thread::spawn(move || unlink_and_synchronize(&p2, &COV[1]))
        };
        let old1 = unlink_and_synchronize(&p1, &COV[0]);
        let old2 = other.join().unwrap();
        reader.join().unwrap();
        drop((old1, old2));
        assert_eq!(drops.load(SeqCst), 2);
    });
    COV[0].assert_overlapped("concurrent_synchronizers_share (p1)");
    COV[1].assert_overlapped("concurrent_synchronizers_share (p2)");
    assert!(BOTH_IN_FLIGHT.load(StdOrdering::Relaxed) > 0, "the two synchronize calls never overlapped");
}

// Checks that `synchronize_expedited` also waits for a reader inside a section when it is called.
#[test]
fn expedited_waits_for_reader() {
    static COV: Coverage = Coverage::new();
    check("expedited_waits_for_reader", 2, || {
        COV.start_iteration();
        let d = Arc::new(Domain::new());
        let drops = Arc::new(AtomicUsize::new(0));
        let p = Arc::new(RcuPtr::new(&d, Some(Canary::new(&drops))));
        let reader = spawn_reader(&d, &p, &COV);
        let unlinked = p.take().expect("only this thread unlinks");
        COV.writer_waits();
        d.synchronize_expedited();
        COV.writer_done();
        let old = match unlinked.try_reclaim() {
            Ok(b) => b,
            Err(_) => panic!("a full grace period elapsed, yet the value is not reclaimable"),
        };
        old.kill();
        reader.join().unwrap();
        drop(old);
        assert_eq!(drops.load(SeqCst), 1);
    });
    COV.assert_overlapped("expedited_waits_for_reader");
}

// Checks that once an unlink's cookie reads as complete (poll_state), no reader can still hold the value.
#[test]
fn poll_state_waits_for_reader() {
    static COV: Coverage = Coverage::new();
    /// Iterations where another thread's grace period made the cookie complete.
    static REUSED: StdAtomicUsize = StdAtomicUsize::new(0);
    check("poll_state_waits_for_reader", 2, || {
        COV.start_iteration();
        let d = Arc::new(Domain::new());
        let drops = Arc::new(AtomicUsize::new(0));
        let p = Arc::new(RcuPtr::new(&d, Some(Canary::new(&drops))));
        let reader = spawn_reader(&d, &p, &COV);
        // Someone else's grace period, which may or may not have started
        // after the unlink below.
        let other = {
            let d = d.clone();
            thread::spawn(move || d.synchronize())
        };
        let unlinked = p.take().expect("only this thread unlinks");
        COV.writer_waits();
        // `Unlinked::try_reclaim` is `poll_state` on the cookie `get_state`
        // took when the value was unlinked.
        let old = match unlinked.try_reclaim() {
            Ok(old) => {
                REUSED.fetch_add(1, StdOrdering::Relaxed);
                old
            }
            Err(unlinked) => unlinked.synchronize(),
        };
        COV.writer_done();
        old.kill();
        other.join().unwrap();
        reader.join().unwrap();
        drop(old);
        assert_eq!(drops.load(SeqCst), 1);
    });
    COV.assert_overlapped("poll_state_waits_for_reader");
    assert!(
        REUSED.load(StdOrdering::Relaxed) > 0,
        "no schedule completed the cookie by another thread's grace period"
    );
}
