//! `vmpipeline`: RadixVM's pipeline workload (Clements et al., EuroSys
//! 2013, §6).
//!
//! # Definition
//! `threads` threads in a ring: each maps a page, writes it, and passes it
//! to the next thread, which writes it too and unmaps it. Every page is
//! touched by two threads, so its unmap must shoot down another CPU's
//! TLB: the pattern of streaming, pipeline-parallel programs. The figure
//! is pages through the pipeline (unmapped) per second.
//!
//! # Invariants
//! - VP1. Every page mapped is unmapped, by the next thread or, for pages
//!   still in flight when the phase ends, after the threads are joined.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::Duration;

use rcuvm::MapFlags;

use super::backend::{Monitor, P, RW, Space};
use super::{Backend, Metric, Outcome, Params, timed};

/// Runs it on `b`.
pub fn run(b: Backend, p: &Params) -> Result<Outcome, String> {
    let sp = Space::new(b);
    let mon = Monitor::start(&sp);
    let n = p.threads;
    let (txs, rxs): (Vec<_>, Vec<_>) = (0..n).map(|_| mpsc::channel::<u64>()).unzip();
    let rxs: Vec<Mutex<mpsc::Receiver<u64>>> = rxs.into_iter().map(Mutex::new).collect();
    let (counts, el) = timed(p.pin, n, p.seconds, |i, stop: &AtomicBool| {
        let mut t = sp.toucher();
        let rx = rxs[i].lock().expect("own receiver");
        let next = &txs[(i + 1) % n];
        let mut c = 0;
        while !stop.load(Ordering::Relaxed) {
            let a = sp.mmap(0, P, RW, MapFlags::empty()).expect("mmap");
            t.write(a, 1).expect("write to a fresh page");
            next.send(a).expect("the ring's receivers live until the end");
            if let Ok(a) = rx.recv_timeout(Duration::from_millis(10)) {
                t.write(a + 8, 2).expect("write to a page passed on");
                sp.munmap(a, P).expect("munmap");
                c += 1;
            }
        }
        c
    });
    // VP1: pages still in flight.
    for rx in &rxs {
        for a in rx.lock().expect("receiver").try_iter() {
            sp.munmap(a, P).expect("munmap");
        }
    }
    Ok(Outcome {
        metrics: vec![Metric::new(
            "ops",
            "pages through the pipeline/s",
            "pages/s",
            counts.iter().sum::<u64>() as f64 / el,
        )],
        costs: mon.finish(),
        ..Outcome::default()
    })
}
