//! `proc-vs-map`: Paul McKenney's test of `/proc/pid/maps` readers against
//! a mapper (linux-mm, the lock-free maps reading work of 2024–2025).
//!
//! # Definition
//! The address space holds 2000 VMAs (a 4000-page mapping with every other
//! page made read-only). A writer maps 4 KiB and unmaps it, over and over,
//! timing each pair (hdrhistogram, ns). Phase 1: the writer alone. Phase 2:
//! `max(1, threads - 1)` readers read the whole maps file in a loop. The
//! headline is the writer's maximum latency with readers over its maximum
//! alone (PM3: per round, their median); p50 and p99 are reported beside
//! it. Each round also runs a control, alone and with its readers (PM6).
//!
//! # Invariants
//! - PM1. Both phases run on the same address space with the same 2000
//!   VMAs and the same helper threads; only the readers differ.
//! - PM2. Target (issue): at most 2× for the strategies whose readers do
//!   not take the mmap lock (every one but `mmap-lock`, which is Linux
//!   before 6.4 and shown for reference). The host is context (about 5×
//!   here, shared/ANCHORS.md).
//! - PM3. The two phases run in [`ROUNDS`] interleaved rounds (alone, with
//!   readers; again), each a quarter of the time; the headline is the
//!   median of the rounds' ratios of the two maxima, and the ratio of the
//!   maxima over the whole run is shown beside it (`max_ratio_all`). Why:
//!   a maximum is one call, and on this shared 2-CPU machine another
//!   tenant or a kernel thread (`kdamond`) takes a CPU for a scheduler
//!   tick (2–4 ms) now and then, in either phase; over a whole run that
//!   one event decides the ratio (2026-12-06: 0.11× to 11.2× across five
//!   runs of one build). Each round's ratio is listed in the notes, so a
//!   round that one preemption decided stays visible.
//! - PM4. With [`Params::pin`](super::Params) (mod.rs W4), the writer runs
//!   on the last CPU this process may use and the readers on the others,
//!   and it warms up for [`WARMUP`] seconds, not measured, before the
//!   first round. Why: unbound, with three threads busy on two CPUs, the
//!   writer lost its CPU for up to a time slice (2–4 ms; the traces showed
//!   an rcuvm thread, `kdamond` or another tenant running instead) in most
//!   rounds with readers; bound, the reader never shares its CPU. The median of the rounds'
//!   ratios (2026-12-06, three runs each, not alternated): glibc build
//!   2.84×, 4.01×, 23.96× unbound, 2.10×, 2.60×, 2.62× bound a few minutes
//!   later; with mimalloc as the lab's allocator (tried, not kept) 2.83–
//!   10.72× unbound, 1.33–2.07× bound. With mimalloc the first round's
//!   alone maximum was 4.5–5.7 ms in all three runs, and the warm-up's own
//!   first calls took 4.3–4.7 ms (traced); the warm-up keeps such one-time
//!   costs of a new thread out of the rounds whatever the allocator.
//! - PM5. The writer sorts its calls of [`SLOW_NS`] or more by where
//!   their time went (stall.rs ST1: on its CPU, preempted, blocked, or its
//!   virtual CPU stolen by the hypervisor). Reported beside the ratio, not
//!   subtracted from it. Why: on this shared 2-vCPU machine (2026-12-06,
//!   traced with `perf sched` and cpu-clock samples) most of the writer's
//!   worst calls with readers were not the design's: with no CPU idle, a
//!   nice -10 process of the machine or a `kworker` took the writer's CPU
//!   for 0.5-2.2 ms, or a vCPU did not run at all for 2-3 ms.
//! - PM6. A control runs in the same rounds, each phase as long as the
//!   real ones: a writer whose call fills a private page, alone and beside
//!   readers that fill private buffers ([`NULL_READER_BYTES`]), bound to
//!   the same CPUs. Its ratio (`floor_ratio`) is what the machine alone
//!   does to a writer's maximum when the other CPU is busy; the headline
//!   and its target are unchanged. Why: a C loop that only read the clock
//!   saw no gap over 0.3 ms in 8 s with the other CPU idle, and gaps of
//!   2.8-5.1 ms with it busy (2026-12-06, three runs each); a maximum
//!   ratio over 2x can be the machine's alone, and the control shows
//!   when it is. When the control's median is itself over 2x, a note
//!   says that the verdict (kept as measured, met or missed) is within
//!   the machine's noise.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use rcuvm::{MapFlags, Prot, Strategy};

use super::backend::{Monitor, P, RW, Space};
use super::stall::{SLOW_NS, StallClock, Stalls};
use super::{Backend, Metric, Outcome, Params, allowed_cpus, bind_to_cpu, median, must};

/// VMAs the writer works among.
const VMAS: u64 = 2000;

/// Rounds of the two phases (PM3).
const ROUNDS: usize = 4;

/// The writer's unmeasured warm-up, in seconds (PM4).
const WARMUP: f64 = 0.05;

/// Bytes of private memory each control reader writes over and over
/// (PM6): of the order of a maps read of this address space (196,000
/// bytes for its 4,000 lines, measured).
const NULL_READER_BYTES: usize = 128 << 10;

/// A timed loop's latencies (ns) and its slow calls.
type Timed = Result<(Histogram<u64>, Stalls), String>;

/// Times `call` in a loop for `secs` (hdrhistogram, ns), sorting its slow
/// calls by cause (stall.rs ST1).
fn timed_loop(secs: f64, mut call: impl FnMut() -> Result<(), String>) -> Timed {
    let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).expect("histogram bounds");
    let mut clock = StallClock::new();
    let t0 = Instant::now();
    while t0.elapsed().as_secs_f64() < secs {
        let t = Instant::now();
        call()?;
        let ns = t.elapsed().as_nanos() as u64;
        h.saturating_record(ns);
        clock.after_call(ns);
    }
    Ok((h, clock.stalls))
}

/// The writer's loop: map 4 KiB and unmap it.
fn writer(sp: &Space, secs: f64) -> Timed {
    timed_loop(secs, || {
        let a = must("mmap", sp.mmap(0, P, RW, MapFlags::empty()))?;
        must("munmap", sp.munmap(a, P))
    })
}

/// PM6: the control writer, whose call touches only its own page. It is
/// shorter than a real call; what sets a control's maximum is a stall of
/// the machine, not the call's own work.
fn null_writer(secs: f64) -> Timed {
    let mut page = vec![0u8; P as usize];
    let mut n = 0u8;
    timed_loop(secs, || {
        n = n.wrapping_add(1);
        page.fill(n);
        std::hint::black_box(&mut page);
        Ok(())
    })
}

/// PM6: the control reader: writes its own buffer until `stop`.
fn null_reader(stop: &AtomicBool) {
    let mut buf = vec![0u8; NULL_READER_BYTES];
    let mut n = 0u8;
    while !stop.load(Ordering::Relaxed) {
        n = n.wrapping_add(1);
        buf.fill(n);
        std::hint::black_box(&mut buf);
    }
}

/// Runs both phases on `b`, and the control's two (PM6), in [`ROUNDS`]
/// interleaved rounds (PM3).
pub fn run(b: Backend, p: &Params) -> Result<Outcome, String> {
    let sp = Space::new(b);
    let base = must("mmap", sp.mmap(0, 2 * VMAS * P, RW, MapFlags::empty()))?;
    for i in 0..VMAS {
        must("mprotect", sp.mprotect(base + (2 * i + 1) * P, P, Prot::READ))?;
    }
    // PM1: the sampler runs in both phases, so it disturbs both alike.
    let mon = Monitor::start(&sp);
    let secs = p.seconds / ROUNDS as f64;
    let scans = AtomicU64::new(0);
    // PM4: the writer on the last CPU, the readers on the others.
    let cpus = if p.pin { allowed_cpus() } else { Vec::new() };
    let writer_cpu = cpus.last().copied();
    let reader_cpu = |i: usize| (!cpus.is_empty()).then(|| cpus[i % (cpus.len() - 1).max(1)]);
    let readers = p.threads.saturating_sub(1).max(1);
    // With `readers` threads running `read` on their CPUs, times `write`.
    let with_readers = |read: &(dyn Fn(&AtomicBool) + Sync), write: &dyn Fn() -> Timed| {
        let stop = AtomicBool::new(false);
        thread::scope(|s| {
            for i in 0..readers {
                let (stop, cpu) = (&stop, reader_cpu(i));
                s.spawn(move || {
                    if let Some(c) = cpu {
                        bind_to_cpu(c);
                    }
                    read(stop);
                });
            }
            // Let the readers start before timing the writer.
            thread::sleep(Duration::from_millis(20));
            let t = write();
            stop.store(true, Ordering::Relaxed);
            t
        })
    };
    let maps_reader = |stop: &AtomicBool| {
        while !stop.load(Ordering::Relaxed) {
            std::hint::black_box(sp.maps());
            scans.fetch_add(1, Ordering::Relaxed);
        }
    };
    let (mut alone, mut with, mut null_alone, mut null_with) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    thread::scope(|s| {
        s.spawn(|| {
            if let Some(c) = writer_cpu {
                bind_to_cpu(c);
            }
            // PM4: a warm-up, not measured (a new thread's first calls set
            // up its allocator heap and RCU registration).
            let _ = writer(&sp, WARMUP);
            let _ = null_writer(WARMUP);
            for _ in 0..ROUNDS {
                alone.push(writer(&sp, secs));
                null_alone.push(null_writer(secs));
                with.push(with_readers(&maps_reader, &|| writer(&sp, secs)));
                null_with.push(with_readers(&null_reader, &|| null_writer(secs)));
            }
        });
    });
    let costs = mon.finish();
    must("munmap", sp.munmap(base, 2 * VMAS * P))?;
    let split = |v: Vec<Timed>| -> Result<(Vec<Histogram<u64>>, Stalls), String> {
        let mut stalls = Stalls::default();
        let mut hs = Vec::new();
        for t in v {
            let (h, st) = t?;
            stalls.add(&st);
            hs.push(h);
        }
        Ok((hs, stalls))
    };
    let (alone, slow_alone) = split(alone)?;
    let (with, slow_with) = split(with)?;
    let (null_alone, _) = split(null_alone)?;
    let (null_with, slow_null_with) = split(null_with)?;
    let ratio = |w: &Histogram<u64>, a: &Histogram<u64>| w.max() as f64 / a.max().max(1) as f64;
    let per_round = |w: &[Histogram<u64>], a: &[Histogram<u64>]| -> Vec<f64> {
        w.iter().zip(a).map(|(w, a)| ratio(w, a)).collect()
    };
    let (rounds, null_rounds) = (per_round(&with, &alone), per_round(&null_with, &null_alone));
    let merge = |v: &[Histogram<u64>]| {
        let mut h = v[0].clone();
        for x in &v[1..] {
            h.add(x).expect("same bounds");
        }
        h
    };
    let (alone, with, null_alone, null_with) =
        (merge(&alone), merge(&with), merge(&null_alone), merge(&null_with));
    let us = |h: &Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1e3;
    let headline_ratio = median(&rounds);
    let mut headline =
        Metric::new("max_ratio", "writer max, with readers / alone (round median)", "x", headline_ratio);
    if matches!(b, Backend::Rcuvm(s) if s != Strategy::MmapLock) {
        headline = headline.with_target("<= 2x", headline_ratio <= 2.0, Some(2.0));
    }
    let list = |v: &[f64]| v.iter().map(|x| format!("{x:.2}x")).collect::<Vec<_>>().join(", ");
    let mut notes = vec![
        format!("max with readers / max alone per round (the headline is their median): {}", list(&rounds)),
        format!(
            "control (PM6: a writer and readers that share nothing, same rounds): {} per round; max {:.0} us alone, {:.0} us with its readers",
            list(&null_rounds),
            null_alone.max() as f64 / 1e3,
            null_with.max() as f64 / 1e3
        ),
        format!(
            "writer calls over {} us (PM5), alone: {}; with readers: {}; the control's with its readers: {}",
            SLOW_NS / 1000,
            slow_alone.describe(),
            slow_with.describe(),
            slow_null_with.describe()
        ),
    ];
    let floor = median(&null_rounds);
    if floor > 2.0 {
        // PM6: the verdict is kept as measured; the reader is told it is
        // within what this machine does to a writer that shares nothing.
        notes.push(format!(
            "the control's median ({floor:.2}x) is itself above the 2x target in this run: the machine's own noise \
             can decide this verdict either way"
        ));
    }
    if b == Backend::Linux {
        notes
            .push("the host kernel measured about 5x here (shared/ANCHORS.md): context, not a target".into());
    }
    Ok(Outcome {
        metrics: vec![
            headline,
            Metric::new(
                "floor_ratio",
                "control: max with readers / alone, sharing nothing (round median, PM6)",
                "x",
                floor,
            ),
            Metric::new(
                "max_ratio_all",
                "writer max latency, with readers / alone (whole run)",
                "x",
                ratio(&with, &alone),
            ),
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
            Metric::new(
                "slow_machine",
                "writer calls over 250 us with readers that were preempted or lost their vCPU (PM5; blocked calls not counted)",
                "count",
                (slow_with.preempted + slow_with.stolen) as f64,
            ),
        ],
        notes,
        costs,
    })
}
