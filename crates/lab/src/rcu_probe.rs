//! `rcuvm probe`: a look at the RCU domain: the read-side pair, grace-period
//! medians with and without a busy reader, and a retire storm's backlog.

use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use rcuvm_rcu::{Config, Domain};

/// Runs the measurements and prints their rows.
pub fn run(secs: f64) {
    let d = Arc::new(Domain::new());
    println!("fence mode: {:?}", d.fence_mode());
    println!();
    println!("{:<46} {:>12} {:>12}  verdict", "measurement", "figure", "target");
    let pair = read_pair_ns(&d, secs);
    row("read-side lock+unlock pair", format!("{pair:.2} ns"), "<= 2 ns", Some(pair <= 2.0));
    for (readers, label) in [(0, "0 busy readers"), (1, "1 busy reader")] {
        let (stop, hs) = busy_readers(&d, readers);
        let n = gp_p50(&d, secs, false);
        let busy = readers == 1;
        row(
            &format!("synchronize p50, {label}"),
            format_ns(n),
            if busy { "<= 1 ms" } else { "" },
            busy.then_some(n <= 1_000_000),
        );
        let e = gp_p50(&d, secs, true);
        row(
            &format!("synchronize_expedited p50, {label}"),
            format_ns(e),
            if busy { "<= 50 us" } else { "" },
            busy.then_some(e <= 50_000),
        );
        stop.store(true, Ordering::Relaxed);
        hs.into_iter().for_each(|h| h.join().expect("reader thread"));
    }
    let (rate, max_pending, limit) = retire_storm(secs);
    row("retire storm (2 threads): callbacks/s", format!("{:.2} M", rate / 1e6), "", None);
    row(
        "  pending callbacks, max",
        format!("{max_pending}"),
        &format!("<= {}", limit + 2),
        Some(max_pending <= limit as u64 + 2),
    );
}

fn format_ns(ns: u64) -> String {
    if ns >= 1_000_000 { format!("{:.2} ms", ns as f64 / 1e6) } else { format!("{:.1} us", ns as f64 / 1e3) }
}

fn read_pair_ns(d: &Domain, secs: f64) -> f64 {
    drop(d.read());
    let t0 = Instant::now();
    let mut n = 0u64;
    while t0.elapsed().as_secs_f64() < secs {
        for _ in 0..10_000 {
            let g = d.read();
            black_box(&g);
        }
        n += 10_000;
    }
    t0.elapsed().as_nanos() as f64 / n as f64
}

fn busy_readers(d: &Arc<Domain>, n: usize) -> (Arc<AtomicBool>, Vec<thread::JoinHandle<()>>) {
    let stop = Arc::new(AtomicBool::new(false));
    let hs = (0..n)
        .map(|_| {
            let (d, stop) = (d.clone(), stop.clone());
            thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let g = d.read();
                    black_box(&g);
                    for _ in 0..50 {
                        std::hint::spin_loop();
                    }
                }
            })
        })
        .collect();
    (stop, hs)
}

fn gp_p50(d: &Domain, secs: f64, expedited: bool) -> u64 {
    let mut h = Histogram::<u64>::new(3).expect("histogram");
    let t0 = Instant::now();
    while t0.elapsed().as_secs_f64() < secs / 2.0 || h.len() < 10 {
        let t = Instant::now();
        if expedited {
            d.synchronize_expedited();
        } else {
            d.synchronize();
        }
        h.record(t.elapsed().as_nanos().max(1) as u64).expect("record");
        if t0.elapsed() > Duration::from_secs(30) {
            break;
        }
    }
    h.value_at_quantile(0.5)
}

fn retire_storm(secs: f64) -> (f64, u64, usize) {
    let limit = 1 << 14;
    let d = Arc::new(Domain::with_config(Config::default().callback_limit(limit)));
    let t0 = Instant::now();
    let hs: Vec<_> = (0..2)
        .map(|_| {
            let d = d.clone();
            thread::spawn(move || {
                let mut n = 0u64;
                while t0.elapsed().as_secs_f64() < secs / 2.0 {
                    for i in 0..1000u64 {
                        d.retire(Box::new(i));
                    }
                    n += 1000;
                }
                n
            })
        })
        .collect();
    let n: u64 = hs.into_iter().map(|h| h.join().expect("storm thread")).sum();
    d.barrier();
    let rate = n as f64 / t0.elapsed().as_secs_f64();
    (rate, d.stats().callbacks_pending_max, limit)
}

/// One row of the probes' table, with its verdict when it has a target (a
/// miss is said, never left for the reader to work out).
pub(crate) fn row(what: &str, fig: String, target: &str, met: Option<bool>) {
    let verdict = match met {
        Some(true) => "  met",
        Some(false) => "  MISSED",
        None => "",
    };
    println!("{what:<46} {fig:>12} {target:>12}{verdict}");
}
