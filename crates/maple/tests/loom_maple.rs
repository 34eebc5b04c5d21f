//! loom models of the tree's read side against its writer.
//!
//! Run by `ci/loom.sh` (`--cfg rcuvm_loom`: the tree's atomics and the RCU
//! domain's primitives all come from loom).

#![cfg(rcuvm_loom)]

use loom::sync::Arc;
use loom::thread;
use rcuvm_maple::MapleTree;
use rcuvm_rcu::Domain;

fn model(f: impl Fn() + Sync + Send + 'static) {
    let mut b = loom::model::Builder::new();
    if b.preemption_bound.is_none() {
        b.preemption_bound = Some(2);
    }
    b.check(f);
}

/// A full root leaf: 7 entries and 8 free ranges between and around them
/// (15 slots); one more insert splits it.
fn full_leaf() -> MapleTree<std::sync::Arc<u64>> {
    let t = MapleTree::new(std::sync::Arc::new(Domain::new()));
    let mut w = t.write();
    for i in 0..7u64 {
        w.insert(i * 0x10 + 1..i * 0x10 + 8, std::sync::Arc::new(i)).unwrap();
    }
    drop(w);
    assert_eq!(t.stats().height, 1);
    t
}

// Checks that a reader walking the tree while the writer splits the root
// leaf finds every old entry intact, and the new one either whole or not at all.
#[test]
fn load_during_root_split() {
    model(|| {
        let t = Arc::new(full_leaf());
        let r = {
            let t = t.clone();
            thread::spawn(move || {
                let g = t.domain().read();
                let old = t.load(0x31, &g).map(|e| (e.range.clone(), *e.value));
                assert_eq!(old, Some((0x31..0x38, 3)));
                let new = t.load(0x72, &g).map(|e| (e.range.clone(), *e.value));
                assert!(new.is_none() || new == Some((0x71..0x78, 7)), "{new:?}");
            })
        };
        t.write().insert(0x71..0x78, std::sync::Arc::new(7)).unwrap();
        assert_eq!(t.stats().height, 2, "the insert did not split the root");
        r.join().unwrap();
        t.validate().unwrap();
    });
}

// Checks that an iteration concurrent with a split and an erase never goes
// backwards, never overlaps, and reports the entries that exist throughout.
#[test]
fn iterate_during_split_and_erase() {
    model(|| {
        let t = Arc::new(full_leaf());
        let r = {
            let t = t.clone();
            thread::spawn(move || {
                let g = t.domain().read();
                let seen: Vec<_> = t.iter_from(0, &g).map(|e| (e.range.start, *e.value)).collect();
                for w in seen.windows(2) {
                    assert!(w[0].0 < w[1].0);
                }
                for keep in [0u64, 1, 2, 4, 5, 6] {
                    assert!(seen.iter().any(|&(_, v)| v == keep), "{keep} missing from {seen:?}");
                }
            })
        };
        {
            let mut w = t.write();
            w.insert(0x71..0x78, std::sync::Arc::new(7)).unwrap();
            w.erase(0x31..0x38).unwrap();
        }
        r.join().unwrap();
        t.validate().unwrap();
    });
}

// Checks that an in-place exact-fit replacement is seen whole: the old value
// or the new one, and the old one stays readable until the reader is done.
#[test]
fn load_during_in_place_replace() {
    model(|| {
        let t = Arc::new(full_leaf());
        let r = {
            let t = t.clone();
            thread::spawn(move || {
                let g = t.domain().read();
                let v = t.load(0x22, &g).map(|e| *e.value);
                assert!(v == Some(2) || v == Some(20), "{v:?}");
                thread::yield_now();
                // Still readable: the old value is freed after a grace period.
                assert!(v == t.load(0x22, &g).map(|e| *e.value) || v == Some(2));
            })
        };
        let old = t.write().replace(0x21..0x28, std::sync::Arc::new(20u64)).unwrap();
        assert_eq!(*old, 2);
        r.join().unwrap();
    });
}

/// A value that says when it is dropped: through a loom atomic, so the
/// model orders the drop against the reader's check of the flag.
struct Probe {
    dropped: std::sync::Arc<loom::sync::atomic::AtomicBool>,
    v: u64,
}

impl Drop for Probe {
    fn drop(&mut self) {
        self.dropped.store(true, loom::sync::atomic::Ordering::SeqCst);
    }
}

// Checks reclamation itself (N3, R1): a value a reader found stays alive
// until the reader's guard ends, though the writer replaced it, handed its
// retired nodes and value to RCU (`flush`) and waited for the callbacks
// (`barrier`) meanwhile. The other models never reach a batch's size, so
// everything they retire is freed when the tree drops, after the reader
// has joined (a review found this gap).
#[test]
fn retired_value_outlives_the_readers_guard() {
    model(|| {
        let dropped = std::sync::Arc::new(loom::sync::atomic::AtomicBool::new(false));
        let t: Arc<MapleTree<std::sync::Arc<Probe>>> =
            Arc::new(MapleTree::new(std::sync::Arc::new(Domain::new())));
        t.write().insert(0x10..0x20, std::sync::Arc::new(Probe { dropped: dropped.clone(), v: 1 })).unwrap();
        let r = {
            let t = t.clone();
            thread::spawn(move || {
                let g = t.domain().read();
                if let Some(e) = t.load(0x18, &g) {
                    let p: &Probe = &e.value;
                    thread::yield_now();
                    // Found under the guard: not dropped while it lasts.
                    assert!(!p.dropped.load(loom::sync::atomic::Ordering::SeqCst), "freed under a reader");
                    assert!(p.v == 1 || p.v == 2, "{}", p.v);
                }
            })
        };
        {
            let mut w = t.write();
            w.store(0x10..0x20, std::sync::Arc::new(Probe { dropped: std::sync::Arc::default(), v: 2 }))
                .unwrap();
            w.flush();
        }
        t.domain().barrier();
        r.join().unwrap();
        assert!(
            dropped.load(loom::sync::atomic::Ordering::SeqCst),
            "the old value was freed by its callback"
        );
    });
}
