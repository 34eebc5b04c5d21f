//! The lab's workloads: each a loop from the literature or the kernel's
//! own tests, run the same way on every rcuvm strategy and on the host
//! kernel (backend.rs), each in its own file.
//!
//! # Owns
//! The registry ([`ALL`], [`find`]), what a run gives back ([`Outcome`],
//! [`Metric`], [`Target`]) and the timed-threads helper every workload uses.
//!
//! # Invariants
//! - W1. A figure is what the run measured; a target's verdict is computed
//!   from it at run time, never written down (a missed target says so).
//! - W2. A workload that cannot run on a backend says why
//!   ([`Workload::unsupported`]) instead of reporting zeros.
//! - W3. Every run takes about `phases × seconds` of wall time.
//! - W4. With [`Params::pin`] (the default; `--no-affinity` turns it off),
//!   thread `i` of [`timed`] (the loops of every workload but
//!   `proc-vs-map`, `maps-race` and `replay`; `proc-vs-map` binds its
//!   writer and readers apart, its PM4) is bound to the `i`-th CPU
//!   this process may use
//!   (modulo their count), on every backend alike, as will-it-scale binds
//!   its tasks by default. Why: unbound, the scheduler moves a faulting
//!   thread between the two CPUs and its cache with it, and a phase's rate
//!   moved by 20–40% from round to round (fault-churn rcu-dead kept 78.6%,
//!   78.0%, 90.5% unbound against 94.5%, 88.2%, 89.5% bound, alternating
//!   runs). RCU reclaimer threads stay unbound.
//!
//! # Concurrency
//! Each run spawns and joins its own threads; nothing outlives it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use serde::Serialize;

pub mod backend;
mod fault_churn;
mod maps_race;
mod mmap1;
mod page_fault;
mod proc_vs_map;
mod replay;
mod stall;
mod vmglobal;
mod vmlocal;
mod vmpipeline;

pub use backend::{Backend, Costs};

/// How long and how wide a run is.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Params {
    /// Seconds of each measured phase.
    pub seconds: f64,
    /// Threads (workloads say how they use them).
    pub threads: usize,
    /// Bind each workload thread to a CPU (W4).
    pub pin: bool,
}

/// A target and whether the run met it (W1).
#[derive(Clone, Debug, Serialize)]
pub struct Target {
    /// The target as the issue states it (`>= 95%`).
    pub text: String,
    /// Met in this run.
    pub met: bool,
    /// The threshold, drawn on plots.
    pub line: Option<f64>,
}

/// One figure of a run.
#[derive(Clone, Debug, Serialize)]
pub struct Metric {
    /// Stable key (JSON, plots).
    pub key: &'static str,
    /// What it is, for people.
    pub label: &'static str,
    /// Its unit.
    pub unit: &'static str,
    /// The value.
    pub value: f64,
    /// Its target, where the issue sets one for this backend.
    pub target: Option<Target>,
}

impl Metric {
    /// A figure without a target.
    pub fn new(key: &'static str, label: &'static str, unit: &'static str, value: f64) -> Metric {
        Metric { key, label, unit, value, target: None }
    }

    /// The same with a target: `met` decides the verdict (W1).
    pub fn with_target(mut self, text: &str, met: bool, line: Option<f64>) -> Metric {
        self.target = Some(Target { text: text.to_string(), met, line });
        self
    }
}

/// What one workload on one backend gave.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Outcome {
    /// Its figures, the headline first.
    pub metrics: Vec<Metric>,
    /// Anything a reader needs to read them right.
    pub notes: Vec<String>,
    /// What the run cost in RCU, shootdowns and memory.
    pub costs: Costs,
}

/// A workload of the suite.
pub struct Workload {
    /// Its name on the command line.
    pub name: &'static str,
    /// One line: what it does.
    pub about: &'static str,
    /// Measured phases (W3).
    pub phases: u32,
    /// Why it cannot run on a backend, if it cannot (W2).
    pub unsupported: fn(Backend) -> Option<&'static str>,
    /// Runs it.
    pub run: fn(Backend, &Params) -> Result<Outcome, String>,
}

fn everywhere(_: Backend) -> Option<&'static str> {
    None
}

/// Every workload, in the suite's order.
pub const ALL: &[Workload] = &[
    Workload {
        name: "fault-churn",
        about: "faulting threads beside a thread that maps and unmaps elsewhere: throughput kept",
        phases: 3,
        unsupported: everywhere,
        run: fault_churn::run,
    },
    Workload {
        name: "page-fault",
        about: "will-it-scale page_fault1: map 128 MiB, write every page, unmap",
        phases: 2,
        unsupported: everywhere,
        run: page_fault::run,
    },
    Workload {
        name: "mmap",
        about: "will-it-scale mmap1: map and unmap 128 MiB, untouched",
        phases: 1,
        unsupported: everywhere,
        run: mmap1::run,
    },
    Workload {
        name: "vmlocal",
        about: "RadixVM: each thread maps, writes and unmaps a page of its own",
        phases: 1,
        unsupported: everywhere,
        run: vmlocal::run,
    },
    Workload {
        name: "vmpipeline",
        about: "RadixVM: a thread maps and writes a page, the next writes and unmaps it",
        phases: 1,
        unsupported: everywhere,
        run: vmpipeline::run,
    },
    Workload {
        name: "vmglobal",
        about: "RadixVM: threads map, write and unmap pages of one shared region",
        phases: 1,
        unsupported: everywhere,
        run: vmglobal::run,
    },
    Workload {
        name: "proc-vs-map",
        about: "McKenney: mmap+munmap latency among 2000 VMAs, alone and with maps readers, beside a control",
        phases: 4,
        unsupported: everywhere,
        run: proc_vs_map::run,
    },
    Workload {
        name: "maps-race",
        about: "selftest proc-maps-race: maps lines at a boundary during split/merge, shrink/expand, remap",
        phases: 2,
        unsupported: everywhere,
        run: maps_race::run,
    },
    Workload {
        name: "replay",
        about: "the shared traces' calls replayed while threads fault in their mappings",
        phases: 1,
        unsupported: replay::unsupported,
        run: replay::run,
    },
];

/// The workload called `name`.
pub fn find(name: &str) -> Result<&'static Workload, String> {
    ALL.iter().find(|w| w.name == name).ok_or_else(|| {
        let names: Vec<&str> = ALL.iter().map(|w| w.name).collect();
        format!("unknown workload '{name}': expected one of {}", names.join(", "))
    })
}

/// Runs `body(i, stop)` on `n` threads for `secs`; each returns a count.
/// Returns the counts and the seconds the threads actually ran.
pub fn timed<F>(pin: bool, n: usize, secs: f64, body: F) -> (Vec<u64>, f64)
where
    F: Fn(usize, &AtomicBool) -> u64 + Sync,
{
    let stop = AtomicBool::new(false);
    let t0 = Instant::now();
    let counts = thread::scope(|s| {
        let (body, stop) = (&body, &stop);
        let cpus = if pin { allowed_cpus() } else { Vec::new() };
        let hs: Vec<_> = (0..n)
            .map(|i| {
                let cpu = (!cpus.is_empty()).then(|| cpus[i % cpus.len()]);
                s.spawn(move || {
                    if let Some(c) = cpu {
                        bind_to_cpu(c);
                    }
                    body(i, stop)
                })
            })
            .collect();
        thread::sleep(Duration::from_secs_f64(secs));
        stop.store(true, Ordering::Relaxed);
        hs.into_iter().map(|h| h.join().expect("workload thread")).collect()
    });
    (counts, t0.elapsed().as_secs_f64())
}

/// The CPUs this process may run on, in order (W4); empty if unknown.
pub(super) fn allowed_cpus() -> Vec<usize> {
    // SAFETY: a zeroed `cpu_set_t` is a valid empty set, and
    // sched_getaffinity writes at most its size into it.
    let set = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return Vec::new();
        }
        set
    };
    // SAFETY: reads a bit of a valid set, inside its size (CPU_SETSIZE).
    (0..libc::CPU_SETSIZE as usize).filter(|&c| unsafe { libc::CPU_ISSET(c, &set) }).collect()
}

/// Binds the calling thread to `cpu` (W4). A refusal leaves it unbound.
pub(super) fn bind_to_cpu(cpu: usize) {
    // SAFETY: a zeroed `cpu_set_t` is a valid empty set; CPU_SET writes
    // inside it (`cpu` came from `allowed_cpus`, below CPU_SETSIZE).
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        let _ = libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

/// The median of `v` (the mean of the middle two for an even count): the
/// headline of a workload run in interleaved rounds.
pub fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n == 0 {
        0.0
    } else if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// xorshift64: cheap per-thread randomness.
pub fn xorshift(x: &mut u64) -> u64 {
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    *x
}

/// An mm call that must succeed, as a workload error otherwise.
pub fn must<T>(what: &str, r: Result<T, rcuvm::Errno>) -> Result<T, String> {
    r.map_err(|e| format!("{what}: {e}"))
}
