//! MapleTree beside its peers, in one run: `RwLock<BTreeMap>`,
//! `scc::TreeIndex` and `crossbeam_skiplist::SkipMap`.
//!
//! Run: `cargo bench -p rcuvm-maple --bench maple`. The data are VMA-like:
//! ranges of 4–64 KiB with 4–64 KiB gaps; each lookup hits a random address
//! inside a random stored range. A counting allocator measures each
//! structure's memory (printed as `memory:` lines). Figures and targets:
//! `docs/benchmarks.md`.

use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::BTreeMap;
use std::hint::black_box;
use std::ops::Bound;
use std::sync::Arc;
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use parking_lot::RwLock;
use rcuvm_maple::MapleTree;
use rcuvm_rcu::Domain;

/// Counts live heap bytes, to measure each structure's memory.
struct Counting;
static LIVE: AtomicIsize = AtomicIsize::new(0);

// SAFETY: forwards to the system allocator unchanged; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        LIVE.fetch_add(l.size() as isize, Ordering::Relaxed);
        // SAFETY: same contract as ours.
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        LIVE.fetch_sub(l.size() as isize, Ordering::Relaxed);
        // SAFETY: same contract as ours.
        unsafe { System.dealloc(p, l) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

const SIZES: [usize; 4] = [1_000, 10_000, 100_000, 1_000_000];

mod common;
use common::{Rng, probes, ranges};

/// Every structure holds a `u32` index in its nodes (the maple tree in its
/// slot words, value.rs), so the lookups compare like with like.
type Val = u32;

fn build_maple(rs: &[(u64, u64)]) -> MapleTree<Val> {
    let t = MapleTree::new(Arc::new(Domain::new()));
    let mut w = t.write();
    for (i, &(s, e)) in rs.iter().enumerate() {
        w.insert(s..e, i as Val).unwrap();
    }
    drop(w);
    // Free the nodes the build replaced, so memory counts only the tree.
    t.domain().barrier();
    t
}

/// Keyed by start; lookup by `range(..=addr).next_back()`.
fn build_btree(rs: &[(u64, u64)]) -> RwLock<BTreeMap<u64, (u64, Val)>> {
    RwLock::new(rs.iter().enumerate().map(|(i, &(s, e))| (s, (e, i as Val))).collect())
}

/// Keyed by last address (forward-only range scans find the first range
/// ending at or above the address).
fn build_scc(rs: &[(u64, u64)]) -> scc::TreeIndex<u64, (u64, Val)> {
    let t = scc::TreeIndex::new();
    for (i, &(s, e)) in rs.iter().enumerate() {
        let _ = t.insert_sync(e - 1, (s, i as Val));
    }
    t
}

fn build_skip(rs: &[(u64, u64)]) -> crossbeam_skiplist::SkipMap<u64, (u64, Val)> {
    let t = crossbeam_skiplist::SkipMap::new();
    for (i, &(s, e)) in rs.iter().enumerate() {
        t.insert(e - 1, (s, i as Val));
    }
    t
}

fn maple_get(t: &MapleTree<Val>, a: u64) -> Option<Val> {
    let g = t.domain().read();
    t.load(a, &g).map(|e| e.value)
}
fn btree_get(t: &RwLock<BTreeMap<u64, (u64, Val)>>, a: u64) -> Option<Val> {
    let m = t.read();
    m.range(..=a).next_back().filter(|(_, (e, _))| *e > a).map(|(_, (_, v))| *v)
}
fn scc_get(t: &scc::TreeIndex<u64, (u64, Val)>, a: u64) -> Option<Val> {
    let g = scc::Guard::new();
    t.range(a.., &g).next().filter(|(_, (s, _))| *s <= a).map(|(_, (_, v))| *v)
}
fn skip_get(t: &crossbeam_skiplist::SkipMap<u64, (u64, Val)>, a: u64) -> Option<Val> {
    t.lower_bound(Bound::Included(&a)).filter(|e| e.value().0 <= a).map(|e| e.value().1)
}

/// Runs `f` over the probes on `threads` threads, `iters` lookups each.
fn timed<F: Fn(u64) -> Option<Val> + Sync>(threads: usize, iters: u64, ps: &[Vec<u64>], f: F) -> Duration {
    let t0 = Instant::now();
    std::thread::scope(|s| {
        for p in ps.iter().take(threads) {
            let f = &f;
            s.spawn(move || {
                for i in 0..iters as usize {
                    black_box(f(p[i % p.len()]));
                }
            });
        }
    });
    t0.elapsed()
}

fn memory_and_lookups(c: &mut Criterion) {
    for &n in &SIZES {
        let rs = ranges(n);
        let ps: Vec<Vec<u64>> = (0..2).map(|k| probes(&rs, 1 << 16, 7 + k)).collect();
        let base = LIVE.load(Ordering::Relaxed);
        let maple = build_maple(&rs);
        let m_maple = LIVE.load(Ordering::Relaxed) - base;
        let btree = build_btree(&rs);
        let m_btree = LIVE.load(Ordering::Relaxed) - base - m_maple;
        let scc = build_scc(&rs);
        let m_scc = LIVE.load(Ordering::Relaxed) - base - m_maple - m_btree;
        let skip = build_skip(&rs);
        let m_skip = LIVE.load(Ordering::Relaxed) - base - m_maple - m_btree - m_scc;
        // `maple_total` adds the node pool (alloc.rs) to the nodes.
        let nodes = maple.stats().bytes as f64;
        println!(
            "memory: n={n} bytes/entry maple_nodes={:.1} maple_total={:.1} btreemap={:.1} scc={:.1} skiplist={:.1} plain_array=24.0 height={}",
            nodes / n as f64,
            m_maple as f64 / n as f64,
            m_btree as f64 / n as f64,
            m_scc as f64 / n as f64,
            m_skip as f64 / n as f64,
            maple.stats().height,
        );
        for threads in [1usize, 2] {
            let mut g =
                c.benchmark_group(format!("lookup {threads} thread{}", if threads > 1 { "s" } else { "" }));
            g.sample_size(20)
                .warm_up_time(Duration::from_millis(500))
                .measurement_time(Duration::from_secs(2));
            g.bench_function(BenchmarkId::new("MapleTree", n), |b| {
                b.iter_custom(|it| timed(threads, it, &ps, |a| maple_get(&maple, a)))
            });
            g.bench_function(BenchmarkId::new("RwLock<BTreeMap>", n), |b| {
                b.iter_custom(|it| timed(threads, it, &ps, |a| btree_get(&btree, a)))
            });
            g.bench_function(BenchmarkId::new("scc::TreeIndex", n), |b| {
                b.iter_custom(|it| timed(threads, it, &ps, |a| scc_get(&scc, a)))
            });
            g.bench_function(BenchmarkId::new("crossbeam SkipMap", n), |b| {
                b.iter_custom(|it| timed(threads, it, &ps, |a| skip_get(&skip, a)))
            });
            g.finish();
        }
        let mut g = c.benchmark_group("gap search");
        g.sample_size(20).warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(2));
        let top = rs[rs.len() - 1].1;
        g.bench_function(BenchmarkId::new("MapleTree: empty_area_rev 16 KiB", n), |b| {
            let mut r = Rng(3);
            b.iter(|| {
                let g = maple.domain().read();
                let hi = 0x10_0000 + r.next() % top;
                black_box(maple.empty_area_rev(0, hi, 0x4000, &g))
            })
        });
        g.finish();
    }
}

/// Erase a random range and store it back (one pair per iteration).
fn churn(c: &mut Criterion) {
    let mut g = c.benchmark_group("erase+store churn");
    g.sample_size(20).warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(2));
    for &n in &SIZES[..3] {
        let rs = ranges(n);
        let maple = build_maple(&rs);
        let btree = build_btree(&rs);
        let scc = build_scc(&rs);
        let skip = build_skip(&rs);
        let mut r = Rng(11);
        g.bench_function(BenchmarkId::new("MapleTree", n), |b| {
            b.iter(|| {
                let i = (r.next() % n as u64) as usize;
                let (s, e) = rs[i];
                let mut w = maple.write();
                w.erase(s..e).unwrap();
                w.store(s..e, i as Val).unwrap();
            })
        });
        g.bench_function(BenchmarkId::new("RwLock<BTreeMap>", n), |b| {
            b.iter(|| {
                let i = (r.next() % n as u64) as usize;
                let (s, e) = rs[i];
                let mut m = btree.write();
                m.remove(&s);
                m.insert(s, (e, i as Val));
            })
        });
        g.bench_function(BenchmarkId::new("scc::TreeIndex", n), |b| {
            b.iter(|| {
                let i = (r.next() % n as u64) as usize;
                let (s, e) = rs[i];
                scc.remove_sync(&(e - 1));
                let _ = scc.insert_sync(e - 1, (s, i as Val));
            })
        });
        g.bench_function(BenchmarkId::new("crossbeam SkipMap", n), |b| {
            b.iter(|| {
                let i = (r.next() % n as u64) as usize;
                let (s, e) = rs[i];
                skip.remove(&(e - 1));
                skip.insert(e - 1, (s, i as Val));
            })
        });
        maple.validate().unwrap();
    }
    g.finish();
}

criterion_group!(benches, memory_and_lookups, churn);
criterion_main!(benches);
