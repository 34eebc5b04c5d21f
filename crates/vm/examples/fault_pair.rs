//! What a second thread costs a faulting thread, by what the second thread
//! does and where it runs: the experiment behind the fault-churn notes in
//! `docs/benchmarks.md`.
//!
//! A faulter (bound to CPU 0) maps 64 MiB of an `rcu-dead`
//! address space, writes every page, unmaps it, repeats: the lab's
//! fault-churn faulter. Beside it, on the second CPU, a thread that does
//! one of:
//! - `churn`: map 16 KiB at a far hint, write its 4 pages, unmap (the lab's
//!   churner); `churn-far`: the same with a hint that moves every cycle,
//!   so that it is always free (it prints how many mappings missed their hint);
//! - `map-only`: map and unmap 16 KiB, no write (VMA churn, no fault);
//! - `madvise`: write the 4 pages of one 16 KiB mapping, `MADV_DONTNEED` it
//!   (faults and zaps, no VMA change);
//! - `fault`: what the faulter does, on a 64 MiB mapping of its own;
//! - `spin`: a loop that touches no memory;
//!
//! in the faulter's address space, or (suffixes)
//! `-shared-phys`: in another address space of this process that shares the
//! faulter's physical memory (`PhysMem`); `-other-mm`: in another address
//! space of this process; `-other-process`: in a child process (this
//! program run again with `--second-only`).
//!
//! Each mode runs in interleaved rounds (faulter alone, then with the
//! second thread) and prints the medians: faults/s alone and with, their
//! ratio, the second thread's rate, and the faulter's median fault latency
//! (one fault in 16 timed).
//!
//! Run: `cargo run --release -p rcuvm --example fault_pair -- [mode|all] [seconds] [rounds]`
//! (defaults: all, 2, 3).
use std::process::{Child, Command};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rcuvm::{AddressSpace, MapFlags, Prot, Strategy};

const BIG: u64 = 64 << 20;
const SMALL: u64 = 16 << 10;
const PAGE: u64 = 4096;
/// Where the second thread maps (a hint, far from the faulter's mappings).
const HINT: u64 = 0x10_0000_0000;
const MADV_DONTNEED: i32 = 4;
const MODES: [&str; 14] = [
    "churn",
    "churn-far",
    "churn-shared-phys",
    "churn-other-mm",
    "map-only",
    "madvise",
    "madvise-shared-phys",
    "madvise-other-mm",
    "madvise-other-process",
    "fault",
    "fault-shared-phys",
    "fault-other-mm",
    "fault-other-process",
    "spin",
];

fn rw() -> Prot {
    Prot::READ | Prot::WRITE
}

fn anon() -> MapFlags {
    MapFlags::PRIVATE | MapFlags::ANONYMOUS
}

fn bind(cpu: Option<usize>) {
    let Some(cpu) = cpu else { return };
    // SAFETY: a zeroed cpu_set_t is a valid empty set; CPU_SET writes inside
    // it (cpu is 0 or 1, below CPU_SETSIZE).
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

/// The faulter's loop until `stop`: faults/s and the median sampled latency (ns).
fn fault_loop(mm: &Arc<AddressSpace>, stop: &AtomicBool) -> (f64, u64) {
    let mut cpu = mm.cpu();
    let (mut n, mut lat) = (0u64, Vec::with_capacity(1 << 20));
    let t0 = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        let a = mm.mmap(0, BIG, rw(), anon(), None, 0).expect("mmap");
        for i in 0..BIG / PAGE {
            if i % 16 == 0 {
                let t = Instant::now();
                cpu.write(a + i * PAGE, i).expect("write");
                lat.push(t.elapsed().as_nanos() as u64);
            } else {
                cpu.write(a + i * PAGE, i).expect("write");
            }
        }
        mm.munmap(a, BIG).expect("munmap");
        n += BIG / PAGE;
    }
    lat.sort_unstable();
    (n as f64 / t0.elapsed().as_secs_f64(), lat.get(lat.len() / 2).copied().unwrap_or(0))
}

/// Where the second thread runs, from a mode's suffix.
fn place(mode: &str) -> (&str, &str) {
    for w in ["-shared-phys", "-other-mm", "-other-process"] {
        if let Some(kind) = mode.strip_suffix(w) {
            return (kind, &w[1..]);
        }
    }
    (mode, "same-mm")
}

/// The second thread's loop until `stop`: its cycles (faults for `fault`).
fn second_loop(mode: &str, mm: &Arc<AddressSpace>, stop: &AtomicBool) -> u64 {
    let (kind, place) = place(mode);
    let own;
    let mm = match place {
        "shared-phys" => {
            own =
                Arc::new(AddressSpace::builder().strategy(Strategy::RcuDead).phys(mm.phys().clone()).build());
            &own
        }
        "other-mm" | "other-process" => {
            own = Arc::new(AddressSpace::with_strategy(Strategy::RcuDead));
            &own
        }
        _ => mm,
    };
    let mut cpu = mm.cpu();
    let (mut n, mut off_hint) = (0u64, 0u64);
    // The madvise kind's one mapping (the others map their own).
    let base = if kind == "madvise" { mm.mmap(HINT, SMALL, rw(), anon(), None, 0).expect("mmap") } else { 0 };
    while !stop.load(Ordering::Relaxed) {
        match kind {
            "churn" | "churn-far" => {
                // `churn-far`: a hint that moves on every cycle, so that no
                // dead entry (rcu-dead) holds it and the mapping stays far
                // from the faulter's; `churn`'s fixed hint mostly lands just
                // below it under rcu-dead (lab fault_churn.rs).
                let hint = if kind == "churn" { HINT } else { HINT + (n % 4096) * 2 * SMALL };
                let a = mm.mmap(hint, SMALL, rw(), anon(), None, 0).expect("mmap");
                if a != hint {
                    off_hint += 1;
                }
                for i in 0..SMALL / PAGE {
                    cpu.write(a + i * PAGE, i).expect("write");
                }
                mm.munmap(a, SMALL).expect("munmap");
            }
            "map-only" => {
                let a = mm.mmap(HINT, SMALL, rw(), anon(), None, 0).expect("mmap");
                mm.munmap(a, SMALL).expect("munmap");
            }
            "fault" => {
                let a = mm.mmap(0, BIG, rw(), anon(), None, 0).expect("mmap");
                for i in 0..BIG / PAGE {
                    cpu.write(a + i * PAGE, i).expect("write");
                }
                mm.munmap(a, BIG).expect("munmap");
                n += BIG / PAGE - 1;
            }
            "spin" => {
                for i in 0..1000u64 {
                    std::hint::black_box(i);
                }
            }
            _ => {
                for i in 0..SMALL / PAGE {
                    cpu.write(base + i * PAGE, i).expect("write");
                }
                mm.madvise(base, SMALL, MADV_DONTNEED).expect("madvise");
            }
        }
        n += 1;
    }
    if kind.starts_with("churn") {
        eprintln!("{mode}: {off_hint} of {n} mappings not at their hint");
    }
    n
}

/// One phase of `secs`: the faulter's (faults/s, median ns) and the second
/// thread's rate (0 when there is none or it runs in a child process).
fn phase(mode: Option<&str>, secs: f64, cpu: &[Option<usize>; 2]) -> ((f64, u64), f64) {
    let mm = Arc::new(AddressSpace::with_strategy(Strategy::RcuDead));
    let stop = AtomicBool::new(false);
    let child: Option<Child> = mode.filter(|m| place(m).1 == "other-process").map(|m| {
        let mut c = Command::new(std::env::current_exe().expect("own path"));
        c.args(["--second-only", m, &format!("{secs}")]);
        if let Some(k) = cpu[1] {
            c.env("FAULT_PAIR_CPU", k.to_string());
        }
        c.spawn().expect("child process")
    });
    let in_thread = mode.filter(|_| child.is_none());
    let out = std::thread::scope(|s| {
        let f = s.spawn(|| {
            bind(cpu[0]);
            fault_loop(&mm, &stop)
        });
        let g = s.spawn(|| match in_thread {
            Some(m) => {
                bind(cpu[1]);
                second_loop(m, &mm, &stop)
            }
            _ => 0,
        });
        std::thread::sleep(Duration::from_secs_f64(secs));
        stop.store(true, Ordering::Relaxed);
        (f.join().expect("faulter"), g.join().expect("second thread") as f64 / secs)
    });
    if let Some(mut c) = child {
        let _ = c.wait();
    }
    out
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--second-only") {
        // The child of `madvise-other-process`: the second thread alone.
        let secs: f64 = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(2.0);
        bind(std::env::var("FAULT_PAIR_CPU").ok().and_then(|s| s.parse().ok()));
        let mm = Arc::new(AddressSpace::with_strategy(Strategy::RcuDead));
        let stop = AtomicBool::new(false);
        std::thread::scope(|s| {
            let g = s.spawn(|| second_loop(&args[1], &mm, &stop));
            std::thread::sleep(Duration::from_secs_f64(secs));
            stop.store(true, Ordering::Relaxed);
            g.join().expect("second thread");
        });
        return;
    }
    let which = args.first().map_or("all", String::as_str);
    let secs: f64 = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(2.0);
    let rounds: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(3);
    let modes: Vec<&str> = if which == "all" { MODES.to_vec() } else { vec![which] };
    if let Some(m) = modes.iter().find(|m| !MODES.contains(m)) {
        eprintln!("unknown mode {m}: one of {} or all", MODES.join(", "));
        std::process::exit(2);
    }
    // CPUs 0 and 1 (a refused binding leaves the thread unbound).
    let two = std::thread::available_parallelism().is_ok_and(|n| n.get() >= 2);
    let cpu = if two { [Some(0), Some(1)] } else { [None, None] };
    println!(
        "faulter on CPU {:?}, second thread on CPU {:?}; {rounds} rounds of {secs} s each way",
        cpu[0], cpu[1]
    );
    println!(
        "{:<22} {:>12} {:>12} {:>7} {:>14} {:>11} {:>10}",
        "second thread", "alone /s", "with /s", "ratio", "second /s", "p50 alone", "p50 with"
    );
    for m in modes {
        let (mut a, mut w, mut r, mut s, mut la, mut lw) = (vec![], vec![], vec![], vec![], vec![], vec![]);
        for _ in 0..rounds {
            let ((fa, pa), _) = phase(None, secs, &cpu);
            let ((fw, pw), sr) = phase(Some(m), secs, &cpu);
            a.push(fa);
            w.push(fw);
            r.push(fw / fa);
            s.push(sr);
            la.push(pa as f64);
            lw.push(pw as f64);
        }
        println!(
            "{:<22} {:>12.0} {:>12.0} {:>7.3} {:>14.0} {:>8.0} ns {:>7.0} ns",
            m,
            median(a),
            median(w),
            median(r),
            median(s),
            median(la),
            median(lw)
        );
    }
}
