//! Side-by-side benchmarks of the RCU domain against its peers.
//!
//! Run: `cargo bench -p rcuvm-rcu --bench rcu`. Figures and how to read them
//! are in `docs/benchmarks.md`.

use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use rcuvm_rcu::Domain;

/// The read-side lock+unlock pair, beside its peers (targets: ≤ 2 ns and ≥ 3×
/// cheaper than `crossbeam_epoch::pin`).
fn read_side(c: &mut Criterion) {
    let mut g = c.benchmark_group("read-side pair");
    let d = Domain::new();
    drop(d.read()); // first use registers the thread
    g.bench_function("rcuvm-rcu: read()", |b| {
        b.iter(|| {
            let guard = d.read();
            black_box(&guard);
        })
    });
    g.bench_function("rcuvm-rcu: nested read()", |b| {
        let _outer = d.read();
        b.iter(|| {
            let guard = d.read();
            black_box(&guard);
        })
    });
    let reader = d.reader();
    g.bench_function("rcuvm-rcu: Reader::read() (registered handle)", |b| {
        b.iter(|| {
            let guard = reader.read();
            black_box(&guard);
        })
    });
    let handle = crossbeam_epoch::default_collector().register();
    g.bench_function("crossbeam-epoch: LocalHandle::pin() (registered handle)", |b| {
        b.iter(|| {
            let guard = handle.pin();
            black_box(&guard);
        })
    });
    g.bench_function("crossbeam-epoch: pin()", |b| {
        b.iter(|| {
            let guard = crossbeam_epoch::pin();
            black_box(&guard);
        })
    });
    let lock = parking_lot::RwLock::new(0u64);
    g.bench_function("parking_lot: RwLock::read()", |b| {
        b.iter(|| {
            let guard = lock.read();
            black_box(&*guard);
        })
    });
    g.finish();
}

/// Readers that enter and leave sections in a tight loop until stopped.
fn busy_readers(d: &Arc<Domain>, n: usize) -> (Arc<AtomicBool>, Vec<thread::JoinHandle<()>>) {
    let stop = Arc::new(AtomicBool::new(false));
    let hs = (0..n)
        .map(|_| {
            let d = d.clone();
            let stop = stop.clone();
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

/// Grace-period latency with 0, 1 and 2 busy readers (targets: expedited p50
/// ≤ 50 µs and normal p50 ≤ 1 ms with a busy reader).
fn grace_periods(c: &mut Criterion) {
    let mut g = c.benchmark_group("grace period");
    g.sample_size(30).measurement_time(Duration::from_secs(3));
    for readers in [0, 1, 2] {
        let d = Arc::new(Domain::new());
        let (stop, hs) = busy_readers(&d, readers);
        g.bench_function(format!("synchronize, {readers} busy readers"), |b| b.iter(|| d.synchronize()));
        g.bench_function(format!("synchronize_expedited, {readers} busy readers"), |b| {
            b.iter(|| d.synchronize_expedited())
        });
        stop.store(true, Ordering::Relaxed);
        hs.into_iter().for_each(|h| h.join().unwrap());
    }
    g.finish();
}

/// `call` throughput: queueing plus the reclaimer's batches, measured to the
/// barrier so that every callback counted has run.
fn call_throughput(c: &mut Criterion) {
    let mut g = c.benchmark_group("callbacks");
    g.sample_size(20);
    let d = Domain::new();
    g.bench_function("rcuvm-rcu: retire(Box<u64>) + share of barrier", |b| {
        b.iter_custom(|iters| {
            let t = Instant::now();
            for i in 0..iters {
                d.retire(Box::new(i));
            }
            d.barrier();
            t.elapsed()
        })
    });
    g.bench_function("crossbeam-epoch: defer_destroy + flush", |b| {
        b.iter_custom(|iters| {
            let t = Instant::now();
            for i in 0..iters {
                let guard = crossbeam_epoch::pin();
                let o = crossbeam_epoch::Owned::new(i).into_shared(&guard);
                // SAFETY: `o` was never shared with another thread.
                unsafe { guard.defer_destroy(o) };
            }
            crossbeam_epoch::pin().flush();
            t.elapsed()
        })
    });
    g.finish();
}

criterion_group!(benches, read_side, grace_periods, call_throughput);
criterion_main!(benches);
