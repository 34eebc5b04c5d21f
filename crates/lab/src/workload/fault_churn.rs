//! `fault-churn`: how much fault throughput survives mapping churn
//! elsewhere in the same address space (the motivating case of the
//! linux-mm thread "synchronize_rcu in munmap?").
//!
//! # Definition
//! `max(1, threads - 1)` faulting threads each map 64 MiB, write every
//! page, unmap, repeat; phase 1 alone, phase 2 beside one churning thread
//! that maps 16 KiB, writes its 4 pages and unmaps it, as fast as it can
//! (the loops of `shared/ANCHORS.md`). The headline is phase 2's fault
//! rate as a fraction of phase 1's.
//!
//! A churner running as fast as it can does more cycles on a backend whose
//! munmap is cheaper (rcuvm's cycle takes a few µs, the kernel's about
//! 28 µs here), and each cycle disturbs the faulters a little: the
//! headline then charges a backend for being fast. Two more figures show
//! what a cycle costs the faulters, on equal terms: phase 3 paces the
//! churner at [`PACED`] cycles/s on every backend (below what each does
//! flat out), and `lost_per_cycle` divides phase 2's lost fault time by
//! its churn cycles.
//!
//! The faulters also time one fault in [`SAMPLE`] (hdrhistogram, ns; the
//! two clock reads cost about 1% of the loop): a design whose faults wait
//! for the churn (the mmap lock, a grace period) shows it in the tail, the
//! thread's question, even where the throughput hides it.
//!
//! The churn is *elsewhere*, as the issue says: its mapping asks for an
//! address ([`CHURN_HINT`], 64 GiB) far from the faulters' mappings, on
//! both backends. Left to top-down placement it would land right below a
//! faulter's 64 MiB mapping and merge with it (both anonymous, same
//! rights), so that every churn cycle replaced the faulter's VMA twice:
//! that measures VMA merging, not churn elsewhere.
//!
//! Under `rcu-dead` the hint is mostly not free: the previous cycle's dead
//! entry still holds it until a grace period has passed, and mmap then
//! places top-down, as Linux does with a hint it cannot honour, just
//! below the faulter's mapping (merging with it when it touches it).
//! Measured with `cargo run --release -p rcuvm --example fault_pair --
//! churn 2 3` and `-- churn-far 2 3` (2026-12-06, two runs each): the
//! churner missed its hint in over 99.8% of its mappings; one whose hint
//! moved every cycle (always free, far away) missed it in 0–184 of
//! 527–611 k and kept the same share of the faulter's throughput (0.913
//! and 0.914 against 0.932 and 0.913). The placement is part of the
//! design under test, and not what it loses.
//!
//! # Invariants
//! - FC1. Both phases run the same faulting loop on a fresh address space
//!   of the same backend; only the churning thread differs.
//! - FC2. Target (issue): `rcu-dead` keeps at least 95% in phase 2 (the
//!   churner flat out, as in `shared/ANCHORS.md`); the host kernel is
//!   context (about 60% on this machine), not a target. The paced figure
//!   is context too: it never stands in for the target.
//! - FC3. The phases run in [`ROUNDS`] interleaved rounds (alone, flat
//!   out, paced; again), each a quarter of the time, and the headline is
//!   the median of the rounds' kept fractions. Why: on a shared 2-CPU
//!   machine one noisy second moves a phase's rate by 20% or more (a whole
//!   run once showed 104% kept because its single alone phase was slow);
//!   interleaving makes drifts hit both sides, and the median drops a
//!   round that one preemption decided. Each round's figure is listed in
//!   the notes.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use hdrhistogram::Histogram;
use std::time::{Duration, Instant};

use rcuvm::{MapFlags, Strategy};

use super::backend::{Monitor, P, RW, Space};
use super::{Backend, Costs, Metric, Outcome, Params, median, timed};

/// The faulting threads' mapping.
const BIG: u64 = 64 << 20;
/// The churning thread's mapping.
const SMALL: u64 = 16 << 10;
/// One fault in this many is timed.
const SAMPLE: u64 = 16;

/// The churn rate of phase 3, cycles per second.
const PACED: u64 = 20_000;

/// Rounds of the three phases (FC3).
const ROUNDS: usize = 4;

/// Where the churning thread asks for its mapping (a hint, not
/// `MAP_FIXED`): far from every other mapping of the process.
const CHURN_HINT: u64 = 0x10_0000_0000;

/// Maps `len` (at the hint `addr`, 0 for none), writes every page, unmaps;
/// returns the pages written.
pub(super) fn fault_cycle(sp: &Space, t: &mut super::backend::Toucher, addr: u64, len: u64) -> u64 {
    sampled_fault_cycle(sp, t, addr, len, None)
}

/// [`fault_cycle`], timing one write (one fault: the pages are fresh) in
/// [`SAMPLE`] into `h` when there is one.
fn sampled_fault_cycle(
    sp: &Space,
    t: &mut super::backend::Toucher,
    addr: u64,
    len: u64,
    mut h: Option<&mut Histogram<u64>>,
) -> u64 {
    let a = sp.mmap(addr, len, RW, MapFlags::empty()).expect("mmap");
    for i in 0..len / P {
        let t0 = (h.is_some() && i % SAMPLE == 0).then(Instant::now);
        t.write(a + i * P, i).expect("write to a fresh mapping");
        if let (Some(t0), Some(h)) = (t0, h.as_deref_mut()) {
            h.saturating_record(t0.elapsed().as_nanos() as u64);
        }
    }
    sp.munmap(a, len).expect("munmap");
    len / P
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("histogram bounds")
}

/// What one phase measured.
struct Phase {
    faults_per_s: f64,
    churn_per_s: f64,
    /// The sampled faults' latencies, ns.
    latency: Histogram<u64>,
    costs: Costs,
}

/// The faulting threads' count (FC1).
fn faulters(p: &Params) -> usize {
    p.threads.saturating_sub(1).max(1)
}

/// One phase of `secs`: faults/s, churn cycles/s, costs. `churn`: none,
/// flat out (`Some(None)`), or paced at a rate (`Some(Some(rate))`).
fn faults(b: Backend, p: &Params, secs: f64, churn: Option<Option<u64>>) -> Phase {
    let sp = Space::new(b);
    let mon = Monitor::start(&sp);
    let faulters = faulters(p);
    let n = faulters + usize::from(churn.is_some());
    let latency = Mutex::new(histogram());
    let (counts, el) = timed(p.pin, n, secs, |i, stop: &AtomicBool| {
        let mut t = sp.toucher();
        let mut c = 0;
        if i < faulters {
            let mut h = histogram();
            while !stop.load(Ordering::Relaxed) {
                c += sampled_fault_cycle(&sp, &mut t, 0, BIG, Some(&mut h));
            }
            latency.lock().unwrap_or_else(|e| e.into_inner()).add(&h).expect("same bounds");
            return c;
        }
        // Paced: the cycles due each millisecond back to back, then sleep
        // to the next millisecond (a sleep per cycle would cost more
        // wakeups than the cycles themselves).
        let per_ms = churn.flatten().map(|r| r.div_ceil(1000));
        let start = Instant::now();
        while !stop.load(Ordering::Relaxed) {
            c += fault_cycle(&sp, &mut t, CHURN_HINT, SMALL) / 4;
            if let Some(k) = per_ms {
                let due = Duration::from_micros(1000 * c / k);
                if let Some(ahead) = due.checked_sub(start.elapsed()) {
                    std::thread::sleep(ahead);
                }
            }
        }
        c
    });
    let f: u64 = counts[..faulters].iter().sum();
    let c: u64 = counts[faulters..].iter().sum();
    Phase {
        faults_per_s: f as f64 / el,
        churn_per_s: c as f64 / el,
        latency: latency.into_inner().unwrap_or_else(|e| e.into_inner()),
        costs: mon.finish(),
    }
}

/// Runs the three phases on `b`, in [`ROUNDS`] interleaved rounds (FC3).
pub fn run(b: Backend, p: &Params) -> Result<Outcome, String> {
    let secs = p.seconds / ROUNDS as f64;
    let (mut one, mut two, mut three) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        one.push(faults(b, p, secs, None));
        two.push(faults(b, p, secs, Some(None)));
        three.push(faults(b, p, secs, Some(Some(PACED))));
    }
    let mean = |v: &[Phase], f: fn(&Phase) -> f64| v.iter().map(f).sum::<f64>() / v.len() as f64;
    let (alone, churned, churn_rate) =
        (mean(&one, |x| x.faults_per_s), mean(&two, |x| x.faults_per_s), mean(&two, |x| x.churn_per_s));
    let paced_rate = mean(&three, |x| x.churn_per_s);
    let ratios = |v: &[Phase]| -> Vec<f64> {
        v.iter().zip(&one).map(|(x, a)| 100.0 * x.faults_per_s / a.faults_per_s.max(1.0)).collect()
    };
    let (kept_rounds, paced_rounds) = (ratios(&two), ratios(&three));
    let (kept, kept_paced) = (median(&kept_rounds), median(&paced_rounds));
    let merge = |v: &[Phase]| {
        let mut h = histogram();
        for x in v {
            h.add(&x.latency).expect("same bounds");
        }
        h
    };
    let (lat_alone, lat_churned) = (merge(&one), merge(&two));
    let mut costs = Costs::default();
    for x in two.iter().chain(&three) {
        costs.add(&x.costs);
    }
    let us = |h: &Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1e3;
    // Fault time lost per churn cycle: the faulters' lost share of their
    // time, over the cycles that cost it.
    let lost = (1.0 - kept / 100.0).max(0.0) * faulters(p) as f64 / churn_rate.max(1.0) * 1e6;
    let mut m =
        Metric::new("kept", "fault throughput kept under churn (median of the rounds' ratios)", "%", kept);
    if b == Backend::Rcuvm(Strategy::RcuDead) {
        m = m.with_target(">= 95%", kept >= 95.0, Some(95.0));
    }
    Ok(Outcome {
        metrics: vec![
            m,
            Metric::new("alone", "faults/s alone (mean of the rounds)", "faults/s", alone),
            Metric::new("churned", "faults/s with churn (mean of the rounds)", "faults/s", churned),
            Metric::new("churn", "churn cycles/s", "cycles/s", churn_rate),
            Metric::new("lost_per_cycle", "fault time lost per churn cycle", "us", lost),
            Metric::new("kept_paced", "kept with the churn paced at 20k cycles/s", "%", kept_paced),
            Metric::new("paced_churn", "paced churn cycles/s", "cycles/s", paced_rate),
            Metric::new("p99_alone", "fault latency p99 alone", "us", us(&lat_alone, 0.99)),
            Metric::new("p99_churned", "fault latency p99 with churn", "us", us(&lat_churned, 0.99)),
            Metric::new("max_churned", "fault latency max with churn", "us", lat_churned.max() as f64 / 1e3),
        ],
        notes: {
            let list = |v: &[f64]| v.iter().map(|x| format!("{x:.1}%")).collect::<Vec<_>>().join(", ");
            let mut n = vec![format!(
                "kept per round (the headline is their median): {}; paced: {}",
                list(&kept_rounds),
                list(&paced_rounds)
            )];
            if b == Backend::Linux {
                n.push(
                    "the host kernel keeps about 60% here (shared/ANCHORS.md): context, not a target".into(),
                );
            }
            n
        },
        costs,
    })
}
