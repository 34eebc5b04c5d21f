//! The domain's contract, one behaviour per test: what a reader is promised,
//! when callbacks run, and what panics instead of hanging.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use rcuvm_rcu::{Config, Domain, RcuPtr};

/// Counts drops, so tests can see exactly when a value was freed.
struct Tracked(Arc<AtomicUsize>);
impl Drop for Tracked {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

#[test]
fn synchronize_waits_for_a_reader_that_started_before_it() {
    let d = Arc::new(Domain::new());
    let (entered_tx, entered_rx) = mpsc::channel();
    let release = Arc::new(AtomicBool::new(false));
    let left = Arc::new(AtomicBool::new(false));
    let reader = {
        let (d, release, left) = (d.clone(), release.clone(), left.clone());
        thread::spawn(move || {
            let g = d.read();
            entered_tx.send(()).unwrap();
            while !release.load(Ordering::SeqCst) {
                thread::sleep(Duration::from_millis(1));
            }
            left.store(true, Ordering::SeqCst);
            drop(g);
        })
    };
    entered_rx.recv().unwrap();
    let releaser = {
        let release = release.clone();
        thread::spawn(move || {
            thread::sleep(Duration::from_millis(50));
            release.store(true, Ordering::SeqCst);
        })
    };
    d.synchronize();
    assert!(left.load(Ordering::SeqCst), "synchronize returned while a pre-existing reader was inside");
    reader.join().unwrap();
    releaser.join().unwrap();
}

#[test]
fn expedited_waits_for_a_reader_too() {
    let d = Arc::new(Domain::new());
    let (tx, rx) = mpsc::channel();
    let left = Arc::new(AtomicBool::new(false));
    let reader = {
        let (d, left) = (d.clone(), left.clone());
        thread::spawn(move || {
            let g = d.read();
            tx.send(()).unwrap();
            thread::sleep(Duration::from_millis(30));
            left.store(true, Ordering::SeqCst);
            drop(g);
        })
    };
    rx.recv().unwrap();
    d.synchronize_expedited();
    assert!(left.load(Ordering::SeqCst));
    reader.join().unwrap();
}

#[test]
fn synchronize_does_not_wait_for_readers_of_another_domain() {
    let a = Arc::new(Domain::new());
    let b = Domain::new();
    let (tx, rx) = mpsc::channel::<()>();
    let (held_tx, held_rx) = mpsc::channel();
    let h = {
        let a = a.clone();
        thread::spawn(move || {
            let _g = a.read();
            held_tx.send(()).unwrap();
            let _ = rx.recv(); // hold until the main thread is done
        })
    };
    held_rx.recv().unwrap();
    b.synchronize();
    b.synchronize_expedited();
    drop(tx);
    h.join().unwrap();
}

#[test]
fn nested_sections_end_with_the_outermost_guard() {
    let d = Domain::new();
    let outer = d.read();
    let inner = d.read();
    assert!(d.in_read_section());
    drop(outer); // out of order on purpose: nesting is a count, not a stack
    assert!(d.in_read_section());
    drop(inner);
    assert!(!d.in_read_section());
    d.synchronize();
}

#[test]
fn sections_of_two_domains_are_independent() {
    let a = Domain::new();
    let b = Domain::new();
    let _ga = a.read();
    assert!(a.in_read_section());
    assert!(!b.in_read_section());
    b.synchronize(); // legal: we are only inside `a`
}

#[test]
fn a_thread_can_use_more_domains_than_the_fast_cache_holds() {
    let ds: Vec<Domain> = (0..10).map(|_| Domain::new()).collect();
    for _ in 0..3 {
        let guards: Vec<_> = ds.iter().map(|d| d.read()).collect();
        assert!(ds.iter().all(|d| d.in_read_section()));
        drop(guards);
        assert!(ds.iter().all(|d| !d.in_read_section()));
    }
    for d in &ds {
        d.synchronize();
        assert_eq!(d.stats().reader_slots, 1);
    }
}

#[test]
fn a_new_domain_never_takes_over_a_dropped_domains_cache_entry() {
    // The thread-local cache is keyed by the domain's address; a domain made
    // right after another is dropped may get the same memory. A read of the
    // new one must register in it, or its grace periods would not see us.
    for _ in 0..64 {
        let a = Domain::new();
        drop(a.read());
        drop(a);
        let b = Domain::new();
        let g = b.read();
        assert_eq!(b.stats().reader_slots, 1, "the read went to another domain's counter");
        let waited = AtomicBool::new(false);
        thread::scope(|s| {
            s.spawn(|| {
                b.synchronize();
                assert!(waited.load(Ordering::SeqCst), "synchronize did not wait for the reader");
            });
            thread::sleep(Duration::from_millis(1));
            waited.store(true, Ordering::SeqCst);
            drop(g);
        });
    }
}

#[test]
#[should_panic(expected = "synchronize() called inside a read-side section")]
fn synchronize_inside_a_section_panics() {
    let d = Domain::new();
    let _g = d.read();
    d.synchronize();
}

#[test]
#[should_panic(expected = "synchronize_expedited() called inside a read-side section")]
fn synchronize_expedited_inside_a_section_panics() {
    let d = Domain::new();
    let _g = d.read();
    d.synchronize_expedited();
}

#[test]
#[should_panic(expected = "barrier() called inside a read-side section")]
fn barrier_inside_a_section_panics() {
    let d = Domain::new();
    let _g = d.read();
    d.barrier();
}

#[test]
#[should_panic(expected = "Unlinked::synchronize() called inside a read-side section")]
fn unlinked_synchronize_inside_a_section_panics() {
    let d = Domain::new();
    let p = RcuPtr::new(&d, Some(Box::new(1)));
    let _g = d.read();
    let _ = p.take().unwrap().synchronize();
}

#[test]
#[should_panic(expected = "guard of another domain")]
fn load_with_a_guard_of_another_domain_panics() {
    let a = Domain::new();
    let b = Domain::new();
    let p = RcuPtr::new(&a, Some(Box::new(1)));
    let g = b.read();
    let _ = p.load(&g);
}

#[test]
fn barrier_from_a_callback_panics_and_the_panic_is_contained() {
    let d = Arc::new(Domain::new());
    let seen = Arc::new(AtomicBool::new(false));
    let (d2, seen2) = (d.clone(), seen.clone());
    d.call(move || {
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| d2.barrier()));
        let msg = r.unwrap_err();
        let msg = msg.downcast_ref::<&str>().copied().unwrap_or("");
        assert!(msg.contains("barrier() called from an RCU callback"), "{msg}");
        seen2.store(true, Ordering::SeqCst);
    });
    d.barrier();
    assert!(seen.load(Ordering::SeqCst));
}

/// callback.rs C8: a callback of `a` that runs inside a callback of `b`
/// (through `a.run_ready`) and calls `b.barrier()` panics instead of
/// waiting for the callback it runs in. The scenario runs on its own
/// thread so that a regression fails the test instead of hanging it.
#[test]
fn barrier_from_a_callback_nested_in_a_callback_of_the_same_domain_panics() {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        // `a` leaves ready callbacks to callers for long enough that the
        // one below runs inside `b`'s callback, not on `a`'s reclaimer.
        let a = Arc::new(Domain::with_config(Config::default().ready_delay(Duration::from_secs(30))));
        let b = Arc::new(Domain::new());
        a.run_ready(1); // from now on `a`'s reclaimer leaves batches to callers
        let message = Arc::new(std::sync::Mutex::new(None));
        let (b2, m2) = (b.clone(), message.clone());
        a.call(move || {
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| b2.barrier()));
            let m = r.err().and_then(|e| e.downcast_ref::<&str>().map(|s| s.to_string()));
            *m2.lock().unwrap() = Some(m);
        });
        let a2 = a.clone();
        b.call(move || {
            // `a`'s callback becomes ready after its grace period.
            for _ in 0..5000 {
                if a2.run_ready(16) > 0 {
                    return;
                }
                thread::sleep(Duration::from_millis(1));
            }
        });
        b.barrier();
        let m = message.lock().unwrap().take();
        let _ = tx.send(m);
    });
    let got = rx.recv_timeout(Duration::from_secs(20)).expect("b.barrier() inside b's callback hung");
    let msg = got.expect("a's callback ran inside b's").expect("b.barrier() panicked");
    assert!(msg.contains("barrier() called from an RCU callback"), "{msg}");
}

#[test]
fn a_panicking_callback_is_counted_and_the_reclaimer_survives() {
    let d = Domain::new();
    d.call(|| panic!("deliberate test panic in a callback"));
    d.barrier();
    let n = Arc::new(AtomicUsize::new(0));
    let n2 = n.clone();
    d.call(move || {
        n2.fetch_add(1, Ordering::SeqCst);
    });
    d.barrier();
    assert_eq!(n.load(Ordering::SeqCst), 1);
    assert_eq!(d.stats().callbacks_panicked, 1);
}

#[test]
fn retire_frees_only_after_readers_that_saw_it_are_gone() {
    let d = Arc::new(Domain::new());
    let drops = Arc::new(AtomicUsize::new(0));
    let p = Arc::new(RcuPtr::new(&d, Some(Box::new(Tracked(drops.clone())))));
    let (tx, rx) = mpsc::channel();
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let reader = {
        let (d, p, drops) = (d.clone(), p.clone(), drops.clone());
        thread::spawn(move || {
            let g = d.read();
            let v = p.load(&g).unwrap();
            tx.send(()).unwrap();
            go_rx.recv().unwrap();
            thread::sleep(Duration::from_millis(20));
            // Still ours: the grace period cannot have ended.
            assert_eq!(drops.load(Ordering::SeqCst), 0);
            let _ = &v.0;
            drop(g);
        })
    };
    rx.recv().unwrap();
    p.take().unwrap().retire();
    go_tx.send(()).unwrap();
    reader.join().unwrap();
    d.barrier();
    assert_eq!(drops.load(Ordering::SeqCst), 1);
}

#[test]
fn call_may_be_used_inside_a_section() {
    let d = Domain::new();
    let n = Arc::new(AtomicUsize::new(0));
    {
        let _g = d.read();
        for _ in 0..10 {
            let n = n.clone();
            d.call(move || {
                n.fetch_add(1, Ordering::SeqCst);
            });
        }
        assert_eq!(n.load(Ordering::SeqCst), 0, "a callback ran inside the caller's own section");
    }
    d.barrier();
    assert_eq!(n.load(Ordering::SeqCst), 10);
}

#[test]
fn barrier_waits_for_every_earlier_callback() {
    let d = Domain::new();
    let n = Arc::new(AtomicUsize::new(0));
    for _ in 0..1000 {
        let n = n.clone();
        d.call(move || {
            n.fetch_add(1, Ordering::SeqCst);
        });
    }
    d.barrier();
    assert_eq!(n.load(Ordering::SeqCst), 1000);
    let s = d.stats();
    assert_eq!((s.callbacks_queued, s.callbacks_run, s.callbacks_pending), (1000, 1000, 0));
    assert!(s.grace_periods + s.expedited_grace_periods >= 1);
}

#[test]
fn dropping_the_domain_runs_every_pending_callback() {
    let n = Arc::new(AtomicUsize::new(0));
    let d = Domain::new();
    for _ in 0..100 {
        d.retire(Box::new(Tracked(n.clone())));
    }
    drop(d);
    assert_eq!(n.load(Ordering::SeqCst), 100);
}

#[test]
fn retiring_after_the_domain_is_gone_frees_at_once() {
    let n = Arc::new(AtomicUsize::new(0));
    let d = Domain::new();
    let p = RcuPtr::new(&d, Some(Box::new(Tracked(n.clone()))));
    drop(d);
    assert_eq!(n.load(Ordering::SeqCst), 0);
    drop(p); // the cell outlived its domain: no reader can exist any more
    assert_eq!(n.load(Ordering::SeqCst), 1);
}

#[test]
fn dropping_a_cell_retires_its_value() {
    let n = Arc::new(AtomicUsize::new(0));
    let d = Domain::new();
    drop(RcuPtr::new(&d, Some(Box::new(Tracked(n.clone())))));
    d.barrier();
    assert_eq!(n.load(Ordering::SeqCst), 1);
}

#[test]
fn dropping_an_unlinked_value_retires_it() {
    let n = Arc::new(AtomicUsize::new(0));
    let d = Domain::new();
    let p = RcuPtr::new(&d, Some(Box::new(Tracked(n.clone()))));
    {
        let g = d.read();
        let old = p.take();
        // The unlinked value is still readable by the writer…
        assert!(old.is_some());
        drop(old); // …and dropping it only retires it.
        assert_eq!(n.load(Ordering::SeqCst), 0);
        drop(g);
    }
    d.barrier();
    assert_eq!(n.load(Ordering::SeqCst), 1);
}

#[test]
fn poll_state_turns_true_only_after_a_full_grace_period() {
    let d = Domain::new();
    let s = d.get_state();
    assert!(!d.poll_state(s));
    d.synchronize();
    assert!(d.poll_state(s));
    let s2 = d.get_state();
    assert!(!d.poll_state(s2));
    d.cond_synchronize(s2);
    assert!(d.poll_state(s2));
}

#[test]
fn try_reclaim_succeeds_only_after_a_grace_period() {
    let d = Domain::new();
    let p = RcuPtr::new(&d, Some(Box::new(5u32)));
    let u = p.take().unwrap();
    let u = u.try_reclaim().expect_err("no grace period has elapsed");
    d.synchronize();
    assert_eq!(*u.try_reclaim().expect("a grace period elapsed"), 5);
}

#[test]
fn compare_exchange_publishes_only_over_the_expected_value() {
    let d = Domain::new();
    let p = RcuPtr::new(&d, Some(Box::new(1)));
    let g = d.read();
    let cur = p.load(&g);
    let back = p.compare_exchange(None, Some(Box::new(9))).unwrap_err();
    assert_eq!(back.as_deref(), Some(&9));
    let old = p.compare_exchange(cur, Some(Box::new(2))).unwrap();
    assert_eq!(old.as_deref(), Some(&1));
    drop(g);
    drop(old);
    assert_eq!(p.load(&d.read()), Some(&2));
}

#[test]
fn concurrent_replace_loses_no_update() {
    let d = Arc::new(Domain::new());
    let p = Arc::new(RcuPtr::new(&d, Some(Box::new(0u64))));
    let hs: Vec<_> = (0..4)
        .map(|_| {
            let (p, d) = (p.clone(), d.clone());
            thread::spawn(move || {
                for _ in 0..2000 {
                    let g = d.read();
                    p.replace(&g, |v| Some(Box::new(v.copied().unwrap() + 1))).unwrap().retire();
                }
            })
        })
        .collect();
    hs.into_iter().for_each(|h| h.join().unwrap());
    assert_eq!(p.load(&d.read()), Some(&8000));
}

#[test]
fn exiting_threads_give_their_slots_back() {
    let d = Arc::new(Domain::new());
    for _ in 0..50 {
        let d = d.clone();
        thread::spawn(move || drop(d.read())).join().unwrap();
    }
    d.synchronize();
    // One thread at a time: the same slot is reused every time.
    assert_eq!(d.stats().reader_slots, 1);
}

#[test]
fn a_thread_that_exits_inside_a_section_keeps_its_slot() {
    // A leaked guard means a reader that never ends: its slot must not be
    // handed to the next thread (which would corrupt its count).
    let d = Arc::new(Domain::new());
    {
        let d = d.clone();
        thread::spawn(move || std::mem::forget(d.read())).join().unwrap();
    }
    {
        let d = d.clone();
        thread::spawn(move || drop(d.read())).join().unwrap();
    }
    assert_eq!(d.stats().reader_slots, 2);
}

#[test]
fn the_backlog_stays_bounded_during_a_retire_storm() {
    let limit = 1000;
    let d = Arc::new(Domain::with_config(Config::default().callback_limit(limit)));
    let threads = 2;
    let hs: Vec<_> = (0..threads)
        .map(|_| {
            let d = d.clone();
            thread::spawn(move || {
                for i in 0..50_000u64 {
                    d.retire(Box::new([i; 8]));
                }
            })
        })
        .collect();
    hs.into_iter().for_each(|h| h.join().unwrap());
    d.barrier();
    let s = d.stats();
    assert_eq!(s.callbacks_run, 100_000);
    // Each storming thread adds at most one callback past the limit before it
    // helps (callback.rs C3).
    assert!(
        s.callbacks_pending_max <= (limit + threads) as u64,
        "pending reached {} with a limit of {limit}",
        s.callbacks_pending_max
    );
}

#[test]
fn global_domain_is_shared() {
    let a = Domain::global();
    let b = Domain::global();
    assert_eq!(a.id(), b.id());
    drop(a.read());
    a.synchronize();
}

/// Queues `n` callbacks on `d` that count themselves in the result.
fn count_calls(d: &Domain, n: usize) -> Arc<AtomicUsize> {
    let ran = Arc::new(AtomicUsize::new(0));
    for _ in 0..n {
        let r = ran.clone();
        d.call(move || {
            r.fetch_add(1, Ordering::SeqCst);
        });
    }
    ran
}

/// Waits up to `secs` for `f` to hold, polling.
fn eventually(secs: u64, mut f: impl FnMut() -> bool) -> bool {
    let t0 = std::time::Instant::now();
    while t0.elapsed() < Duration::from_secs(secs) {
        if f() {
            return true;
        }
        thread::sleep(Duration::from_millis(1));
    }
    f()
}

#[test]
fn run_ready_runs_a_callback_only_after_its_grace_period() {
    // A long delay, so that the reclaimer leaves the callback to us.
    let d = Arc::new(Domain::with_config(Config::default().ready_delay(Duration::from_secs(3))));
    assert_eq!(d.run_ready(8), 0);
    let (entered_tx, entered_rx) = mpsc::channel();
    let release = Arc::new(AtomicBool::new(false));
    let reader = {
        let (d, release) = (d.clone(), release.clone());
        thread::spawn(move || {
            let g = d.read();
            entered_tx.send(()).unwrap();
            while !release.load(Ordering::SeqCst) {
                thread::sleep(Duration::from_millis(1));
            }
            drop(g);
        })
    };
    entered_rx.recv().unwrap();
    let ran = Arc::new(AtomicUsize::new(0));
    let r = ran.clone();
    d.call(move || {
        r.fetch_add(1, Ordering::SeqCst);
    });
    thread::sleep(Duration::from_millis(50));
    assert_eq!(d.run_ready(8), 0, "ran a callback while a reader that predates it is inside");
    assert_eq!(ran.load(Ordering::SeqCst), 0);
    release.store(true, Ordering::SeqCst);
    reader.join().unwrap();
    // The reclaimer's ready delay (3 s) has not passed: we run it.
    assert!(eventually(2, || d.run_ready(8) == 1), "the callback never became ready");
    assert_eq!(ran.load(Ordering::SeqCst), 1);
    assert_eq!(d.stats().callbacks_run_by_callers, 1);
    assert_eq!(d.stats().callbacks_pending, 0);
}

#[test]
fn what_callers_leave_ready_the_reclaimer_runs() {
    let d = Domain::with_config(Config::default().ready_delay(Duration::from_millis(5)));
    assert_eq!(d.run_ready(8), 0);
    let ran = count_calls(&d, 100);
    // No one calls run_ready again, and no barrier: the reclaimer must.
    assert!(eventually(5, || ran.load(Ordering::SeqCst) == 100), "ran {}", ran.load(Ordering::SeqCst));
    assert_eq!(d.stats().callbacks_run_by_callers, 0);
}

#[test]
fn barrier_waits_for_callbacks_left_to_callers() {
    let d = Domain::with_config(Config::default().ready_delay(Duration::from_secs(3)));
    assert_eq!(d.run_ready(8), 0);
    let ran = count_calls(&d, 10);
    // Some may be run by us, the rest by the barrier's reclaimer.
    d.run_ready(3);
    d.barrier();
    assert_eq!(ran.load(Ordering::SeqCst), 10);
    assert_eq!(d.stats().callbacks_pending, 0);
}

#[test]
fn run_ready_inside_a_section_runs_nothing() {
    let d = Domain::with_config(Config::default().ready_delay(Duration::from_secs(3)));
    assert_eq!(d.run_ready(8), 0);
    d.call(|| {});
    assert!(eventually(2, || {
        let g = d.read();
        let n = d.run_ready(8);
        drop(g);
        n == 0 && d.stats().grace_periods > 0
    }));
    let g = d.read();
    assert_eq!(d.run_ready(8), 0, "a callback ran inside a read-side section of its domain");
    drop(g);
    assert!(eventually(2, || d.run_ready(8) == 1));
}

#[test]
fn barrier_waits_for_a_batch_that_callers_split() {
    let d = Domain::with_config(Config::default().ready_delay(Duration::from_secs(3)));
    assert_eq!(d.run_ready(0), 0);
    let ran = count_calls(&d, 10);
    // One callback of the batch runs here, the other nine are left.
    assert!(eventually(2, || d.run_ready(1) == 1), "the batch never became ready");
    d.barrier();
    assert_eq!(ran.load(Ordering::SeqCst), 10, "barrier returned with callbacks of a split batch unrun");
}

#[test]
fn a_call_wakes_an_idle_reclaimer() {
    let d = Domain::new();
    d.call(|| {});
    d.barrier();
    // The reclaimer is now asleep without a timeout (C7): only this call
    // can wake it.
    thread::sleep(Duration::from_millis(20));
    let ran = Arc::new(AtomicUsize::new(0));
    let r = ran.clone();
    d.call(move || {
        r.fetch_add(1, Ordering::SeqCst);
    });
    assert!(eventually(2, || ran.load(Ordering::SeqCst) == 1), "the reclaimer was never woken");
}

#[test]
fn what_callers_leave_runs_within_the_ready_delay_under_a_stream_of_calls() {
    // A stream of calls keeps the reclaimer making batches ready; callers
    // stopped after one call. Each batch must still run about
    // `ready_delay` after it became ready, not when the backlog fills.
    let ready_delay = Duration::from_millis(50);
    let d = Arc::new(Domain::with_config(
        Config::default().ready_delay(ready_delay).batch_delay(Duration::from_millis(1)),
    ));
    assert_eq!(d.run_ready(0), 0);
    // A reader in 200 µs sections makes each grace period last long
    // enough that calls are always pending when the reclaimer looks.
    let stop = Arc::new(AtomicBool::new(false));
    let reader = {
        let (d, stop) = (d.clone(), stop.clone());
        thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let g = d.read();
                let t = std::time::Instant::now();
                while t.elapsed() < Duration::from_micros(200) {
                    std::hint::spin_loop();
                }
                drop(g);
            }
        })
    };
    let worst = Arc::new(AtomicUsize::new(0));
    let t0 = std::time::Instant::now();
    while t0.elapsed() < Duration::from_millis(800) {
        let (w, queued) = (worst.clone(), std::time::Instant::now());
        d.call(move || {
            w.fetch_max(queued.elapsed().as_micros() as usize, Ordering::SeqCst);
        });
        let t = std::time::Instant::now();
        while t.elapsed() < Duration::from_micros(20) {
            std::hint::spin_loop();
        }
    }
    stop.store(true, Ordering::Relaxed);
    reader.join().unwrap();
    d.barrier();
    let worst = Duration::from_micros(worst.load(Ordering::SeqCst) as u64);
    // A grace period, a batch delay and the ready delay, with room for a
    // loaded machine; the bug this guards against gave 340–670 ms.
    assert!(worst < Duration::from_millis(250), "a callback waited {worst:?}");
}

#[test]
fn a_callback_may_drop_the_last_handle_of_its_domain() {
    // callback.rs C13: on the reclaimer, the drop finishes in place. It
    // used to join the reclaimer from itself, panic, and leave the domain
    // half dropped (never dead: later retirements never ran).
    struct Flag(Arc<std::sync::atomic::AtomicBool>);
    impl Drop for Flag {
        fn drop(&mut self) {
            self.0.store(true, std::sync::atomic::Ordering::SeqCst);
        }
    }
    let freed = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let d = Arc::new(Domain::new());
    let p = RcuPtr::new(&d, Some(Box::new(Flag(freed.clone()))));
    let (tx, rx) = std::sync::mpsc::channel();
    let last = std::sync::Mutex::new(Some(d.clone()));
    d.call(move || {
        drop(last.lock().unwrap().take());
        tx.send(()).unwrap();
    });
    drop(d); // the callback holds the last handle now
    rx.recv_timeout(std::time::Duration::from_secs(10)).expect("the callback finished dropping the domain");
    // The domain is dead: a retirement runs at once (C4).
    drop(p.swap(None));
    assert!(freed.load(std::sync::atomic::Ordering::SeqCst), "the retired value was freed");
}
