//! `proc-vs-map`: Paul McKenney's test of `/proc/pid/maps` readers against
//! a mapper (linux-mm, the lock-free maps reading work of 2024–2025).
//!
//! # Definition
//! The address space holds 2000 VMAs (a 4000-page mapping with every other
//! page made read-only). A writer maps 4 KiB and unmaps it, over and over,
//! timing each pair (hdrhistogram, ns). Phase 1: the writer alone. Phase 2:
//! `max(1, threads - 1)` readers read the whole maps file in a loop. The
//! headline is the writer's maximum latency with readers over its maximum
//! alone; p50 and p99 are reported beside it.
//!
//! # Invariants
//! - PM1. Both phases run on the same address space with the same 2000
//!   VMAs and the same helper threads; only the readers differ.
//! - PM2. Target (issue): at most 2× for the strategies whose readers do
//!   not take the mmap lock (every one but `mmap-lock`, which is Linux
//!   before 6.4 and shown for reference). The host is context (about 5×
//!   here, shared/ANCHORS.md).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use rcuvm::{MapFlags, Prot, Strategy};

use super::backend::{Monitor, P, RW, Space};
use super::{Backend, Metric, Outcome, Params, must};

/// VMAs the writer works among.
const VMAS: u64 = 2000;

fn writer(sp: &Space, secs: f64) -> Result<Histogram<u64>, String> {
    let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).expect("histogram bounds");
    let t0 = Instant::now();
    while t0.elapsed().as_secs_f64() < secs {
        let t = Instant::now();
        let a = must("mmap", sp.mmap(0, P, RW, MapFlags::empty()))?;
        must("munmap", sp.munmap(a, P))?;
        h.saturating_record(t.elapsed().as_nanos() as u64);
    }
    Ok(h)
}

/// Runs both phases on `b`.
pub fn run(b: Backend, p: &Params) -> Result<Outcome, String> {
    let sp = Space::new(b);
    let base = must("mmap", sp.mmap(0, 2 * VMAS * P, RW, MapFlags::empty()))?;
    for i in 0..VMAS {
        must("mprotect", sp.mprotect(base + (2 * i + 1) * P, P, Prot::READ))?;
    }
    // PM1: the sampler runs in both phases, so it disturbs both alike.
    let mon = Monitor::start(&sp);
    let alone = writer(&sp, p.seconds);
    let stop = AtomicBool::new(false);
    let scans = AtomicU64::new(0);
    let with = thread::scope(|s| {
        for _ in 0..p.threads.saturating_sub(1).max(1) {
            s.spawn(|| {
                while !stop.load(Ordering::Relaxed) {
                    std::hint::black_box(sp.maps());
                    scans.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
        // Let the readers start before timing the writer.
        thread::sleep(Duration::from_millis(20));
        let h = writer(&sp, p.seconds);
        stop.store(true, Ordering::Relaxed);
        h
    });
    let costs = mon.finish();
    must("munmap", sp.munmap(base, 2 * VMAS * P))?;
    let (alone, with) = (alone?, with?);
    let us = |h: &Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1e3;
    let ratio = with.max() as f64 / alone.max().max(1) as f64;
    let mut headline = Metric::new("max_ratio", "writer max latency, with readers / alone", "x", ratio);
    if matches!(b, Backend::Rcuvm(s) if s != Strategy::MmapLock) {
        headline = headline.with_target("<= 2x", ratio <= 2.0, Some(2.0));
    }
    Ok(Outcome {
        metrics: vec![
            headline,
            Metric::new("p50_alone", "writer p50 alone", "us", us(&alone, 0.5)),
            Metric::new("p99_alone", "writer p99 alone", "us", us(&alone, 0.99)),
            Metric::new("max_alone", "writer max alone", "us", alone.max() as f64 / 1e3),
            Metric::new("p50_with", "writer p50 with readers", "us", us(&with, 0.5)),
            Metric::new("p99_with", "writer p99 with readers", "us", us(&with, 0.99)),
            Metric::new("max_with", "writer max with readers", "us", with.max() as f64 / 1e3),
            Metric::new(
                "scans",
                "maps reads/s (all readers)",
                "reads/s",
                scans.into_inner() as f64 / p.seconds,
            ),
        ],
        notes: if b == Backend::Linux {
            vec!["the host kernel measured about 5x here (shared/ANCHORS.md): context, not a target".into()]
        } else {
            Vec::new()
        },
        costs,
    })
}
