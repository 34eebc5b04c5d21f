//! Concurrent stress: readers check that every result they get was a state
//! of the tree at some moment during their call, while a writer inserts,
//! erases, replaces and stores across nodes (splits, borrows, spanning
//! stores, root growth and collapse).
//!
//! Each value records the number of the write that created it and, once
//! overwritten, of the write that removed it. Writes are numbered: `started`
//! is bumped before a write begins, `done` after it is published. A value a
//! reader sees was live during the call iff it was born by a write that had
//! started before the call ended and killed by none that had finished before
//! the call began. Ranges never change under a value (the writer never
//! truncates), so each value also names its own range.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use rcuvm_maple::MapleTree;
use rcuvm_rcu::Domain;

struct Val {
    start: u64,
    end: u64,
    birth: u64,
    death: AtomicU64,
}

const CELL: u64 = 0x1000;
const CELLS: u64 = 3000;
/// Every `PINNED`th cell holds an entry the writer never touches: iterations
/// must report all of them.
const PINNED: u64 = 50;

struct Clock {
    started: AtomicU64,
    done: AtomicU64,
}

fn check(v: &Val, range: &std::ops::Range<u64>, done0: u64, started1: u64) {
    assert_eq!((v.start, v.end), (range.start, range.end), "value seen under another range");
    assert!(v.birth <= started1, "value born by write {} after the call ended (started {started1})", v.birth);
    let death = v.death.load(Ordering::Acquire);
    assert!(death > done0, "value removed by write {death}, finished before the call began ({done0})");
}

#[test]
fn readers_only_see_states_that_existed_during_their_call() {
    let tree = Arc::new(MapleTree::<Arc<Val>>::new(Arc::new(Domain::new())));
    let clock = Arc::new(Clock { started: AtomicU64::new(0), done: AtomicU64::new(0) });
    let stop = Arc::new(AtomicBool::new(false));
    let mk = |s: u64, e: u64, birth: u64| Val { start: s, end: e, birth, death: AtomicU64::new(u64::MAX) };
    {
        let mut w = tree.write();
        for c in (0..CELLS).step_by(PINNED as usize) {
            w.insert(c * CELL..c * CELL + CELL / 2, Arc::new(mk(c * CELL, c * CELL + CELL / 2, 0))).unwrap();
        }
    }
    let mut readers = Vec::new();
    for r in 0..2u64 {
        let (tree, clock, stop) = (tree.clone(), clock.clone(), stop.clone());
        readers.push(thread::spawn(move || {
            let mut x = r * 7919;
            let mut calls = 0u64;
            while !stop.load(Ordering::Relaxed) {
                x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                let addr = (x >> 20) % (CELLS * CELL);
                let g = tree.domain().read();
                let done0 = clock.done.load(Ordering::Acquire);
                match x % 4 {
                    0 => {
                        let out: Vec<_> = tree.iter_from(0, &g).collect();
                        let started1 = clock.started.load(Ordering::Acquire);
                        let mut pinned = 0;
                        for w in out.windows(2) {
                            assert!(
                                w[0].range.end <= w[1].range.start,
                                "iteration went backwards or overlapped"
                            );
                        }
                        for e in &out {
                            check(e.value, &e.range, done0, started1);
                            if e.value.birth == 0 {
                                pinned += 1;
                            }
                        }
                        assert_eq!(
                            pinned,
                            CELLS.div_ceil(PINNED),
                            "an entry that existed throughout was skipped"
                        );
                    }
                    1 => {
                        let e = tree.load(addr, &g);
                        let started1 = clock.started.load(Ordering::Acquire);
                        if let Some(e) = e {
                            assert!(e.range.contains(&addr));
                            check(e.value, &e.range, done0, started1);
                        }
                    }
                    2 => {
                        let (n, p) = (tree.next(addr, &g), tree.prev(addr, &g));
                        let started1 = clock.started.load(Ordering::Acquire);
                        if let Some(e) = n {
                            assert!(e.range.start > addr);
                            check(e.value, &e.range, done0, started1);
                        }
                        if let Some(e) = p {
                            assert!(e.range.end <= addr);
                            check(e.value, &e.range, done0, started1);
                        }
                    }
                    _ => {
                        let size = CELL * (1 + x % 3);
                        if let Some(s) = tree.empty_area_rev(0, CELLS * CELL, size, &g) {
                            assert!(s + size <= CELLS * CELL);
                        }
                    }
                }
                drop(g);
                calls += 1;
            }
            calls
        }));
    }
    // The writer: a model of the cells it manages (never the pinned ones).
    let mut model: BTreeMap<u64, u64> = BTreeMap::new();
    let covered = |m: &BTreeMap<u64, u64>, s: u64| m.range(..=s).next_back().is_some_and(|(_, &e)| e > s);
    let mut x = 12345u64;
    let t0 = Instant::now();
    let mut writes = 0u64;
    let mut max_height = 0;
    while t0.elapsed() < Duration::from_millis(2500) {
        x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        let c = (x >> 24) % CELLS;
        if c % PINNED == 0 {
            continue;
        }
        let k = clock.started.fetch_add(1, Ordering::AcqRel) + 1;
        let (s, e) = (c * CELL, c * CELL + CELL);
        let mut w = tree.write();
        match (x >> 8) % 3 {
            0 if !covered(&model, s) => {
                w.insert(s..e, Arc::new(mk(s, e, k))).unwrap();
                model.insert(s, e);
            }
            1 if covered(&model, s) => {
                // Mark its death, then publish the removal of the whole entry.
                let (ms, me) = model.range(..=s).next_back().map(|(a, b)| (*a, *b)).unwrap();
                w.load(ms).unwrap().value.death.store(k, Ordering::Release);
                w.erase(ms..me).unwrap();
                model.remove(&ms);
            }
            2 => {
                // A spanning store over a run of whole unpinned cells.
                let n = 1 + (x >> 40) % 12;
                let last = (c + n).min(CELLS);
                if (c..last).any(|q| q % PINNED == 0) {
                    clock.done.fetch_add(1, Ordering::AcqRel);
                    continue;
                }
                let (mut s2, mut e2) = (c * CELL, last * CELL);
                // Widen to whole entries: the writer never truncates.
                if let Some((&ms, &me)) = model.range(..=s2).next_back().filter(|(_, e)| **e > s2) {
                    s2 = ms;
                    e2 = e2.max(me);
                }
                if let Some((&ms, &me)) = model.range(..e2).next_back().filter(|(_, e)| **e > e2) {
                    let _ = ms;
                    e2 = me;
                }
                for (&ms, _) in model.range(s2..e2) {
                    w.load(ms).unwrap().value.death.store(k, Ordering::Release);
                }
                w.store(s2..e2, Arc::new(mk(s2, e2, k))).unwrap();
                let keys: Vec<u64> = model.range(s2..e2).map(|(s, _)| *s).collect();
                for ks in keys {
                    model.remove(&ks);
                }
                model.insert(s2, e2);
            }
            _ => {}
        }
        drop(w);
        clock.done.fetch_add(1, Ordering::AcqRel);
        writes += 1;
        if writes % 512 == 0 {
            tree.validate().unwrap();
            max_height = max_height.max(tree.stats().height);
        }
    }
    stop.store(true, Ordering::Relaxed);
    let calls: u64 = readers.into_iter().map(|h| h.join().unwrap()).sum();
    tree.validate().unwrap();
    assert!(writes > 1000 && calls > 1000, "writes {writes}, reader calls {calls}");
    assert!(max_height >= 3, "the tree never reached three levels ({max_height})");
}
