//! `rcuvm probe`: a look at the maple tree: a VMA-like tree of 10^4 entries,
//! measured beside a `std::sync::RwLock<BTreeMap>` in the same run.

use std::collections::BTreeMap;
use std::hint::black_box;
use std::sync::{Arc, RwLock};
use std::time::Instant;

use rcuvm_maple::MapleTree;
use rcuvm_rcu::Domain;

use crate::rcu_probe::row;

const N: u64 = 10_000;

fn xorshift(x: &mut u64) -> u64 {
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    *x
}

/// Runs the measurements and prints their rows.
pub fn run(secs: f64) {
    // 4-64 KiB ranges with 4-64 KiB gaps, like VMAs.
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    let mut at = 0x10_0000u64;
    let ranges: Vec<(u64, u64)> = (0..N)
        .map(|_| {
            let len = (1 + xorshift(&mut x) % 16) * 0x1000;
            let gap = (1 + xorshift(&mut x) % 16) * 0x1000;
            let s = at;
            at += len + gap;
            (s, s + len)
        })
        .collect();
    let tree = MapleTree::new(Arc::new(Domain::new()));
    {
        let mut w = tree.write();
        for (i, &(s, e)) in ranges.iter().enumerate() {
            w.insert(s..e, i as u32).expect("ranges are disjoint");
        }
    }
    let btree: RwLock<BTreeMap<u64, (u64, u32)>> =
        RwLock::new(ranges.iter().enumerate().map(|(i, &(s, e))| (s, (e, i as u32))).collect());
    let probes: Vec<u64> = (0..1 << 16)
        .map(|_| {
            let (s, e) = ranges[(xorshift(&mut x) % N) as usize];
            s + xorshift(&mut x) % (e - s)
        })
        .collect();
    let time = |f: &dyn Fn(u64) -> Option<u32>| {
        let t0 = Instant::now();
        let mut n = 0u64;
        while t0.elapsed().as_secs_f64() < secs / 4.0 {
            for &p in &probes {
                black_box(f(p));
            }
            n += probes.len() as u64;
        }
        t0.elapsed().as_nanos() as f64 / n as f64
    };
    let maple_ns = time(&|a| {
        let g = tree.domain().read();
        tree.load(a, &g).map(|e| e.value)
    });
    let btree_ns = time(&|a| {
        let m = btree.read().expect("not poisoned");
        m.range(..=a).next_back().filter(|(_, (e, _))| *e > a).map(|(_, (_, v))| *v)
    });
    println!();
    row("maple tree, 10^4 VMA-like entries:", String::new(), "", None);
    row("  load (guard included)", format!("{maple_ns:.1} ns"), "<= 50 ns", Some(maple_ns <= 50.0));
    row("  RwLock<BTreeMap> lookup, same probes", format!("{btree_ns:.1} ns"), "", None);
    let t0 = Instant::now();
    let mut pairs = 0u64;
    while t0.elapsed().as_secs_f64() < secs / 4.0 {
        let i = (xorshift(&mut x) % N) as usize;
        let (s, e) = ranges[i];
        let mut w = tree.write();
        w.erase(s..e).expect("valid range");
        w.store(s..e, i as u32).expect("valid range");
        pairs += 1;
    }
    let churn = t0.elapsed().as_nanos() as f64 / pairs as f64 / 2.0;
    row("  erase or store, per operation", format!("{churn:.0} ns"), "<= 1 us", Some(churn <= 1000.0));
    let st = tree.stats();
    let per_entry = st.bytes as f64 / st.entries as f64;
    row("  node memory per entry", format!("{per_entry:.1} B"), "<= 48 B", Some(per_entry <= 48.0));
    if let Err(e) = tree.validate() {
        println!("  VALIDATION FAILED: {e}");
    }
}
