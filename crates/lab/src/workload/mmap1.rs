//! `mmap`: will-it-scale's `mmap1`.
//!
//! # Definition
//! Each of `threads` threads of one process maps 128 MiB private anonymous
//! memory and unmaps it at once, untouched, as fast as it can; the figure
//! is map+unmap pairs per second over all threads. It measures the mmap
//! lock and the VMA tree, not faults.

use std::sync::atomic::{AtomicBool, Ordering};

use rcuvm::MapFlags;

use super::backend::{Monitor, RW, Space};
use super::{Backend, Metric, Outcome, Params, timed};

/// Each mapping.
const LEN: u64 = 128 << 20;

/// Runs it on `b`.
pub fn run(b: Backend, p: &Params) -> Result<Outcome, String> {
    let sp = Space::new(b);
    let mon = Monitor::start(&sp);
    let (counts, el) = timed(p.pin, p.threads, p.seconds, |_, stop: &AtomicBool| {
        let mut c = 0;
        while !stop.load(Ordering::Relaxed) {
            let a = sp.mmap(0, LEN, RW, MapFlags::empty()).expect("mmap");
            sp.munmap(a, LEN).expect("munmap");
            c += 1;
        }
        c
    });
    let rate = counts.iter().sum::<u64>() as f64 / el;
    Ok(Outcome {
        metrics: vec![
            Metric::new("ops", "mmap+munmap pairs/s, all threads", "ops/s", rate),
            Metric::new("us", "time per pair per thread", "us", 1e6 * p.threads as f64 / rate.max(1.0)),
        ],
        costs: mon.finish(),
        ..Outcome::default()
    })
}
