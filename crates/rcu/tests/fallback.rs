//! The fence fallback for kernels without `membarrier(PRIVATE_EXPEDITED)`.
//!
//! Its own test binary (so its own process): the mode is chosen once per
//! process, before the first domain exists (membarrier.rs B1).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::Duration;

use rcuvm_rcu::{Domain, FenceMode, RcuPtr};

#[test]
fn fence_fallback_keeps_readers_safe() {
    // SAFETY: set before any other thread of this test process exists: this
    // binary has this single test, and it runs it first thing.
    unsafe { std::env::set_var("RCUVM_RCU_NO_MEMBARRIER", "1") };
    let d = Arc::new(Domain::new());
    assert_eq!(d.fence_mode(), FenceMode::Fence);

    struct V(AtomicU64);
    impl Drop for V {
        fn drop(&mut self) {
            self.0.store(0, Ordering::Relaxed);
        }
    }
    let p = Arc::new(RcuPtr::new(&d, Some(Box::new(V(AtomicU64::new(1))))));
    let stop = Arc::new(AtomicBool::new(false));
    let readers: Vec<_> = (0..2)
        .map(|_| {
            let (d, p, stop) = (d.clone(), p.clone(), stop.clone());
            thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let g = d.read();
                    let v = p.load(&g).unwrap();
                    for _ in 0..16 {
                        assert_ne!(v.0.load(Ordering::Relaxed), 0, "reader saw a freed value");
                    }
                }
            })
        })
        .collect();
    let t0 = std::time::Instant::now();
    let mut n = 2;
    while t0.elapsed() < Duration::from_millis(500) {
        let old = p.store(Box::new(V(AtomicU64::new(n)))).unwrap();
        if n % 2 == 0 {
            drop(old.synchronize());
        } else {
            old.retire();
        }
        n += 1;
    }
    stop.store(true, Ordering::Relaxed);
    readers.into_iter().for_each(|h| h.join().unwrap());
    d.barrier();
}
