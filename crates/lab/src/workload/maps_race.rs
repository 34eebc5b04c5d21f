//! `maps-race`: the kernel selftest `tools/testing/selftests/proc/
//! proc-maps-race.c` (Suren Baghdasaryan, 2025), which checks lock-free
//! `/proc/pid/maps` reading.
//!
//! # Definition
//! 129 VMAs of three pages each, side by side, alternately read-write and
//! read-only so that they never merge. The VMA under test is the
//! read-write one whose line starts the second 4096-byte page of the maps
//! text, as in the selftest (on the host, `/proc/self/maps` is read in
//! 4096-byte `read(2)`s, so its line comes from a second read; rcuvm's
//! `maps()` is one walk). A writer flips it between two states while
//! readers read maps and check the three lines around it:
//! - split/merge: `mprotect` the middle page read-only and back (one line,
//!   or three);
//! - shrink/expand: `mremap` to one page and back in place (three pages,
//!   or one);
//! - remap: `mmap(MAP_FIXED)` a read-only page over the middle and a
//!   read-write one back (one line, or three).
//!
//! An anomaly is a read where the neighbours' lines are not exactly there,
//! or the lines between them are neither state, or any two lines of the
//! text overlap or go backwards. The figures are anomalies (must be 0) and
//! reads per second.
//!
//! # Invariants
//! - MR1. Each race gets a third of the two phases' time; the writer ends
//!   each race in the first state.
//! - MR2. Target: 0 anomalies for every correct strategy and the host;
//!   `rcu-refcount` is unsafe by design (strategy.rs S5) and not judged.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::Instant;

use rcuvm::{Errno, MapFlags, Prot, Strategy};

use super::backend::{Monitor, P, RW, Space};
use super::{Backend, Metric, Outcome, Params, must};

/// VMAs, as in the selftest.
const VMAS: u64 = 129;
/// Pages per VMA.
const PAGES: u64 = 3;

/// A maps line's range and permissions.
type Line = (u64, u64, String);

fn parse(text: &str) -> Option<Vec<Line>> {
    text.lines()
        .map(|l| {
            let (range, rest) = l.split_once(' ')?;
            let (s, e) = range.split_once('-')?;
            Some((
                u64::from_str_radix(s, 16).ok()?,
                u64::from_str_radix(e, 16).ok()?,
                rest.get(..4)?.to_string(),
            ))
        })
        .collect()
}

/// A state's lines relative to the VMA's start, in pages: start, end,
/// read-write?
type State = &'static [(u64, u64, bool)];

/// The races: a name and their second state (the first is the whole VMA).
const RACES: [(&str, State); 3] = [
    ("split/merge", &[(0, 1, true), (1, 2, false), (2, 3, true)]),
    ("shrink/expand", &[(0, 1, true)]),
    ("remap", &[(0, 1, true), (1, 2, false), (2, 3, true)]),
];

/// How often an in-place expand may be refused before the run fails.
const REFUSALS: u64 = 1_000_000;

/// Moves the VMA at `s` into state B of `race`, or back. An expand in place
/// that rcuvm refuses (`rcu-dead` keeps a dead entry where the shrink
/// unmapped, until a grace period has passed) is retried and counted in
/// `refused`: the host never refuses it.
fn flip(sp: &Space, race: usize, s: u64, to_b: bool, refused: &AtomicU64) -> Result<(), String> {
    let mid = s + P;
    match (race, to_b) {
        (0, b) => must("mprotect", sp.mprotect(mid, P, if b { Prot::READ } else { RW })),
        (1, true) => must("mremap", sp.mremap(s, 3 * P, P)).map(drop),
        (1, false) => loop {
            match sp.mremap(s, P, 3 * P) {
                Err(Errno::Enomem) if refused.fetch_add(1, Ordering::Relaxed) < REFUSALS => {
                    thread::yield_now()
                }
                r => break must("mremap", r).map(drop),
            }
        },
        (_, b) => must("mmap", sp.mmap(mid, P, if b { Prot::READ } else { RW }, MapFlags::FIXED)).map(drop),
    }
}

/// Checks one read of the maps text (MR2); on an anomaly, the lines from
/// the previous VMA to the next one, as read.
fn check(text: &str, prev: &Line, next: &Line, s: u64, state_b: &[(u64, u64, bool)]) -> Result<(), String> {
    let Some(lines) = parse(text) else { return Err("a line does not parse".into()) };
    let window = || {
        let w: Vec<String> = text
            .lines()
            .zip(&lines)
            .filter(|(_, l)| l.1 > prev.0 && l.0 < next.1)
            .map(|(t, _)| t.split(' ').take(2).collect::<Vec<_>>().join(" "))
            .collect();
        w.join(" | ")
    };
    if lines.windows(2).any(|w| w[1].0 < w[0].1) {
        return Err(format!("lines overlap or go backwards: {}", window()));
    }
    let has = |l: &Line| lines.iter().any(|x| x == l);
    let inner: Vec<(u64, u64, bool)> = lines
        .iter()
        .filter(|l| l.0 >= prev.1 && l.1 <= next.0)
        .map(|l| ((l.0 - s) / P, (l.1 - s) / P, l.2.starts_with("rw")))
        .collect();
    if has(prev) && has(next) && (inner == [(0, PAGES, true)] || inner == state_b) {
        Ok(())
    } else {
        Err(window())
    }
}

/// Runs the three races on `b`.
pub fn run(b: Backend, p: &Params) -> Result<Outcome, String> {
    let sp = Space::new(b);
    let len = VMAS * PAGES * P;
    let base = must("mmap", sp.mmap(0, len, RW, MapFlags::empty()))?;
    for i in (1..VMAS).step_by(2) {
        must("mprotect", sp.mprotect(base + i * PAGES * P, PAGES * P, Prot::READ))?;
    }
    // The read-write VMA whose line starts at or after byte 4096.
    let text = sp.maps();
    let mut off = 0;
    let mut k = VMAS / 2;
    for l in text.lines() {
        let start = l.split('-').next().and_then(|s| u64::from_str_radix(s, 16).ok()).unwrap_or(0);
        if off >= 4096 && start >= base && start < base + len {
            let i = (start - base) / (PAGES * P);
            k = (i + i % 2).clamp(2, VMAS - 3);
            break;
        }
        off += l.len() + 1;
    }
    let s = base + k * PAGES * P;
    let prev: Line = (s - PAGES * P, s, "r--p".into());
    let next: Line = (s + PAGES * P, s + 2 * PAGES * P, "r--p".into());
    let (reads, anomalies, refused) = (AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0));
    let first_bad = Mutex::new(None::<String>);
    let mut per_race = Vec::new();
    let mon = Monitor::start(&sp);
    let t_all = Instant::now();
    for (race, (name, state_b)) in RACES.iter().enumerate() {
        let stop = AtomicBool::new(false);
        let before = anomalies.load(Ordering::Relaxed);
        let flips = thread::scope(|sc| -> Result<u64, String> {
            for _ in 0..p.threads.saturating_sub(1).max(1) {
                sc.spawn(|| {
                    while !stop.load(Ordering::Relaxed) {
                        let text = sp.maps();
                        reads.fetch_add(1, Ordering::Relaxed);
                        if let Err(w) = check(&text, &prev, &next, s, state_b) {
                            anomalies.fetch_add(1, Ordering::Relaxed);
                            first_bad.lock().expect("sample").get_or_insert_with(|| format!("{name}: {w}"));
                        }
                    }
                });
            }
            let t0 = Instant::now();
            let mut n = 0;
            let r = loop {
                if t0.elapsed().as_secs_f64() >= p.seconds * 2.0 / 3.0 {
                    break Ok(n);
                }
                if let Err(e) =
                    flip(&sp, race, s, true, &refused).and_then(|()| flip(&sp, race, s, false, &refused))
                {
                    break Err(e);
                }
                n += 1;
            };
            stop.store(true, Ordering::Relaxed);
            r
        })?;
        per_race
            .push(format!("{name}: {flips} flips, {} anomalies", anomalies.load(Ordering::Relaxed) - before));
    }
    let el = t_all.elapsed().as_secs_f64();
    let costs = mon.finish();
    must("munmap", sp.munmap(base, len))?;
    let bad = anomalies.into_inner();
    let mut m = Metric::new("anomalies", "reads showing neither state", "count", bad as f64);
    let refcount = b == Backend::Rcuvm(Strategy::RcuRefcount);
    if !refcount {
        m = m.with_target("= 0", bad == 0, None);
    }
    let mut notes = per_race;
    if refcount {
        notes.push("rcu-refcount is unsafe by design (its faults); not judged".into());
    }
    if let Some(t) = first_bad.into_inner().expect("sample") {
        notes.push(format!("first anomalous read, the lines around the VMA: {t}"));
    }
    Ok(Outcome {
        metrics: vec![
            m,
            Metric::new("reads", "maps reads/s (all readers)", "reads/s", reads.into_inner() as f64 / el),
            Metric::new(
                "refused",
                "in-place expands refused (ENOMEM), retried",
                "count",
                refused.into_inner() as f64,
            ),
        ],
        notes,
        costs,
    })
}
