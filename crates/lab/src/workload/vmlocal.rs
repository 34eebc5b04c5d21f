//! `vmlocal`: RadixVM's local workload (Clements, Kaashoek, Zeldovich,
//! "RadixVM: Scalable address spaces for multithreaded applications",
//! EuroSys 2013, §6).
//!
//! # Definition
//! Each of `threads` threads repeatedly maps one page, writes it (a page
//! fault), and unmaps it. No thread ever touches another's pages, so an
//! ideal VM system scales perfectly: nothing needs to be shared. Here the
//! kernel places each page (`mmap(NULL, …)`), as RadixVM's threads each
//! work in a region of their own; the figure is map+write+unmap cycles
//! per second over all threads.

use std::sync::atomic::{AtomicBool, Ordering};

use rcuvm::MapFlags;

use super::backend::{Monitor, P, RW, Space};
use super::{Backend, Metric, Outcome, Params, timed};

/// Runs it on `b`.
pub fn run(b: Backend, p: &Params) -> Result<Outcome, String> {
    let sp = Space::new(b);
    let mon = Monitor::start(&sp);
    let (counts, el) = timed(p.pin, p.threads, p.seconds, |_, stop: &AtomicBool| {
        let mut t = sp.toucher();
        let mut c = 0;
        while !stop.load(Ordering::Relaxed) {
            let a = sp.mmap(0, P, RW, MapFlags::empty()).expect("mmap");
            t.write(a, c).expect("write to a fresh page");
            sp.munmap(a, P).expect("munmap");
            c += 1;
        }
        c
    });
    Ok(Outcome {
        metrics: vec![Metric::new(
            "ops",
            "map+write+unmap cycles/s",
            "cycles/s",
            counts.iter().sum::<u64>() as f64 / el,
        )],
        costs: mon.finish(),
        ..Outcome::default()
    })
}
