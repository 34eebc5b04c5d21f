//! callback.rs C12 (callers take a batch the reclaimer is late to take)
//! against C3 (callers that find the backlog full run a batch
//! themselves) and C2 (`barrier`'s watermark).
//!
//! Found in review: a `call` whose C12 take emptied the queue went on to
//! C3 and took an empty batch. It stayed in flight for good, under the
//! same first sequence number as the next batch, so the watermark stuck
//! and every later `barrier` waited forever. The timings below (sleeps of
//! 300 ms) only order the threads' steps; a loaded machine can make the
//! test miss the bug, never fail without it.

use std::sync::{Arc, mpsc};
use std::time::Duration;

use rcuvm_rcu::{Config, Domain};

#[test]
fn a_take_that_empties_the_queue_leaves_no_empty_batch_in_flight() {
    // C12 takes at once (no delays); C3 helps past 15 pending.
    let cfg = Config::default().callback_limit(15).batch_delay(Duration::ZERO).ready_delay(Duration::ZERO);
    let d = Arc::new(Domain::with_config(cfg));
    // Hold the reclaimer inside the first callback (callers do not run
    // callbacks yet, so it runs this one itself).
    let (started_tx, started_rx) = mpsc::channel();
    let (go_tx, go_rx) = mpsc::channel::<()>();
    d.call(move || {
        started_tx.send(()).unwrap();
        go_rx.recv().unwrap();
    });
    started_rx.recv().unwrap();
    assert_eq!(d.run_ready(1), 0, "nothing is ready yet; callers run callbacks from now on");
    // A reader holds a section, so that no grace period ends meanwhile.
    let (in_tx, in_rx) = mpsc::channel();
    let (out_tx, out_rx) = mpsc::channel::<()>();
    let dr = d.clone();
    let reader = std::thread::spawn(move || {
        let _g = dr.read();
        in_tx.send(()).unwrap();
        out_rx.recv().unwrap();
    });
    in_rx.recv().unwrap();
    // 15 calls inside a section (C3 may not wait there), the 16th outside:
    // C12 takes all 16, then the backlog is still over the limit.
    let dm = d.clone();
    let many = std::thread::spawn(move || {
        {
            let _g = dm.read();
            for _ in 0..15 {
                dm.call(|| {});
            }
        }
        dm.call(|| {});
    });
    std::thread::sleep(Duration::from_millis(300));
    // Another caller's C3 batch starts where an empty one would have.
    let dx = d.clone();
    let other = std::thread::spawn(move || dx.call(|| {}));
    std::thread::sleep(Duration::from_millis(300));
    go_tx.send(()).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    out_tx.send(()).unwrap();
    reader.join().unwrap();
    many.join().unwrap();
    other.join().unwrap();
    assert!(d.stats().caller_takes > 0, "the scenario needs a C12 take");
    let (tx, rx) = mpsc::channel();
    let db = d.clone();
    std::thread::spawn(move || {
        db.barrier();
        tx.send(()).unwrap();
    });
    assert!(
        rx.recv_timeout(Duration::from_secs(10)).is_ok(),
        "barrier() did not return in 10 s: a batch stuck in flight (C2)"
    );
}
