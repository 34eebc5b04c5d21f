//! Spanning erases of long runs of adjacent entries, as rcuvm's dead-entry
//! reaping does (vm unmap.rs U6): each run crosses many leaves and inner
//! nodes, beside a dense region that stays.

use std::sync::Arc;

use rcuvm_maple::MapleTree;
use rcuvm_rcu::Domain;

const P: u64 = 0x1000;

/// Where the dense region starts; the runs go below it.
const TOP: u64 = 0x7000_0000_0000;

/// A tree holding a dense region that stays: 4000 one-page entries from
/// `TOP` up.
fn dense_tree(domain: &Arc<Domain>) -> MapleTree<Arc<u64>> {
    let tree = MapleTree::new(domain.clone());
    for i in 0..4000u64 {
        tree.write().insert(TOP + i * P..TOP + (i + 1) * P, Arc::new(i)).unwrap();
    }
    tree
}

/// xorshift64 from `seed`.
fn xorshift(mut x: u64) -> impl FnMut() -> u64 {
    move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    }
}

#[test]
fn erasing_runs_of_adjacent_entries_keeps_the_tree_valid() {
    let domain = Arc::new(Domain::new());
    let tree = dense_tree(&domain);
    let top = TOP;
    let mut next = xorshift(0x9e37_79b9_7f4a_7c15);
    for round in 0..200u64 {
        // A run of n adjacent pages below the region, top-down, as
        // mmap(NULL) places them while the previous ones stay.
        let n = 1 + next() % 3000;
        let lo = top - n * P;
        for i in (0..n).rev() {
            tree.write().insert(lo + i * P..lo + (i + 1) * P, Arc::new(round)).unwrap();
        }
        tree.validate().unwrap();
        // Erase it in a few runs, in random order.
        let cut = lo + (next() % n) * P;
        let parts = [(cut, top), (lo, cut)];
        let parts = if next() % 2 == 0 { parts } else { [parts[1], parts[0]] };
        for (a, b) in parts {
            if a < b {
                let removed = tree.write().erase(a..b).unwrap();
                assert_eq!(removed as u64, (b - a) / P, "round {round}");
                tree.validate().unwrap_or_else(|e| panic!("round {round}: {e}"));
            }
        }
        assert_eq!(tree.len(), 4000, "round {round}");
    }
    drop(tree);
    domain.barrier();
}

/// rcuvm's proc-vs-map under rcu-dead, as tree operations: one-page entries
/// placed top-down in the highest gap under a dense region, queued, and
/// erased in batches of the oldest, adjacent ones coalesced into one erase.
#[test]
fn top_down_placement_with_batched_run_erases_keeps_the_tree_valid() {
    let domain = Arc::new(Domain::new());
    let tree = dense_tree(&domain);
    let top = TOP;
    let mut next = xorshift(0x2545_f491_4f6c_dd1d);
    let mut queue = std::collections::VecDeque::new();
    for step in 0..20_000u64 {
        let a = tree.write().empty_area_rev(0x1000, top, P).unwrap();
        tree.write().insert(a..a + P, Arc::new(step)).unwrap();
        queue.push_back((a, a + P));
        if next() % 64 == 0 {
            let k = (next() as usize % queue.len()) + 1;
            let mut runs: Vec<(u64, u64)> = queue.drain(..k).collect();
            runs.sort_unstable();
            runs.dedup_by(|n, p| {
                let adj = p.1 == n.0;
                if adj {
                    p.1 = n.1;
                }
                adj
            });
            for (s, e) in runs {
                tree.write().erase(s..e).unwrap();
                tree.validate().unwrap_or_else(|err| panic!("step {step}: erase {s:#x}..{e:#x}: {err}"));
            }
        }
    }
    drop(tree);
    domain.barrier();
}

/// Erases whose span runs from the first leaf of one parent to the last
/// leaf of another and leaves too few items for one leaf: the rebuild
/// borrows a cousin, and the parent it leaves behind is overwritten with
/// its children, the span's own edge leaves among them, which must be
/// retired once (a second retirement dropped their values twice: found by
/// rcuvm's proc-vs-map once dead entries were erased in runs).
#[test]
fn short_spanning_erases_that_borrow_a_cousin_retire_each_node_once() {
    let domain = Arc::new(Domain::new());
    let n = 640u64;
    let base = 0x10_0000u64;
    // 40 leaves under 4 parents. Every erase of whole groups of 8 entries:
    // leaves hold up to 16 and top-down insertion packs them full, so some
    // of these spans start and end on parents' boundaries.
    for i in (0..n).step_by(8) {
        for j in (i + 8..=n).step_by(8) {
            let tree = MapleTree::new(domain.clone());
            for k in (0..n).rev() {
                tree.write().insert(base + k * P..base + (k + 1) * P, Arc::new(k)).unwrap();
            }
            let removed = tree.write().erase(base + i * P..base + j * P).unwrap();
            assert_eq!(removed as u64, j - i, "erase {i}..{j}");
            tree.validate().unwrap_or_else(|e| panic!("erase {i}..{j}: {e}"));
            assert_eq!(tree.len() as u64, n - (j - i), "erase {i}..{j}");
            let g = domain.read();
            assert_eq!(tree.iter_from(0, &g).count() as u64, n - (j - i), "erase {i}..{j}");
        }
    }
    domain.barrier();
}
