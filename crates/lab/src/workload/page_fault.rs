//! `page-fault`: will-it-scale's `page_fault1` (Anton Blanchard's
//! benchmark; `pft` measures the same path).
//!
//! # Definition
//! Each thread maps 128 MiB private anonymous memory, writes one word of
//! every page (one page fault each), unmaps it, and repeats. Phase 1 runs
//! one thread, phase 2 `threads` threads of one process (address space);
//! the figures are faults per second and phase 2's scaling over phase 1.
//!
//! # Invariants
//! - PF1. Each phase runs on a fresh address space; only the thread count
//!   differs.

use std::sync::atomic::{AtomicBool, Ordering};

use super::backend::{Monitor, Space};
use super::fault_churn::fault_cycle;
use super::{Backend, Costs, Metric, Outcome, Params, timed};

/// Each thread's mapping.
const LEN: u64 = 128 << 20;

fn rate(b: Backend, p: &Params, threads: usize) -> (f64, Costs) {
    let sp = Space::new(b);
    let mon = Monitor::start(&sp);
    let (counts, el) = timed(p.pin, threads, p.seconds, |_, stop: &AtomicBool| {
        let mut t = sp.toucher();
        let mut c = 0;
        while !stop.load(Ordering::Relaxed) {
            c += fault_cycle(&sp, &mut t, 0, LEN);
        }
        c
    });
    (counts.iter().sum::<u64>() as f64 / el, mon.finish())
}

/// Runs both phases on `b`.
pub fn run(b: Backend, p: &Params) -> Result<Outcome, String> {
    let (one, _) = rate(b, p, 1);
    let (many, costs) = rate(b, p, p.threads);
    Ok(Outcome {
        metrics: vec![
            Metric::new("faults", "faults/s, all threads", "faults/s", many),
            Metric::new("faults1", "faults/s, one thread", "faults/s", one),
            Metric::new("scaling", "all threads over one", "x", many / one.max(1.0)),
            Metric::new("ns", "time per fault, one thread", "ns", 1e9 / one.max(1.0)),
        ],
        costs,
        ..Outcome::default()
    })
}
