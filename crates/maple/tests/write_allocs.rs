//! The writer's own allocations: a store reuses the writer's scratch
//! vectors (write.rs R8), so in steady state it asks the allocator for
//! nothing but the nodes it builds (when the pool is empty) and, once per
//! batch of retired nodes, the RCU callback that frees them.
//!
//! Why it matters: every allocation the writer makes may wait on the
//! allocator's lock, which the threads freeing its old nodes and values
//! hold (glibc's arena lock: the lab's proc-vs-map writer slept there
//! thousands of times in 2 s).

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use rcuvm_maple::MapleTree;
use rcuvm_rcu::Domain;

/// Counts allocations other than nodes (which are 64-byte aligned).
struct Counting;
static SMALL_ALLOCS: AtomicU64 = AtomicU64::new(0);

// SAFETY: forwards to the system allocator unchanged; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        if l.align() < 64 {
            SMALL_ALLOCS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: same contract as ours.
        unsafe { System.alloc(l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        if l.align() < 64 {
            SMALL_ALLOCS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: same contract as ours.
        unsafe { System.realloc(p, l, new) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        // SAFETY: same contract as ours.
        unsafe { System.dealloc(p, l) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

#[test]
fn steady_state_stores_and_erases_allocate_almost_nothing() {
    let tree: MapleTree<u32> = MapleTree::new(Arc::new(Domain::new()));
    let ranges: Vec<(u64, u64)> =
        (0..10_000u64).map(|i| (0x10_0000 + i * 0x3000, 0x10_0000 + i * 0x3000 + 0x2000)).collect();
    {
        let mut w = tree.write();
        for (i, &(s, e)) in ranges.iter().enumerate() {
            w.insert(s..e, i as u32).unwrap();
        }
    }
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    let mut churn = |ops: usize| {
        for _ in 0..ops / 2 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let i = (x % ranges.len() as u64) as usize;
            let (s, e) = ranges[i];
            let mut w = tree.write();
            w.erase(s..e).unwrap();
            w.store(s..e, i as u32).unwrap();
        }
    };
    churn(20_000); // warm the writer's scratch vectors
    let before = SMALL_ALLOCS.load(Ordering::Relaxed);
    let ops = 40_000;
    churn(ops);
    let per_op = (SMALL_ALLOCS.load(Ordering::Relaxed) - before) as f64 / ops as f64;
    tree.validate().unwrap();
    println!("allocations (not nodes) per store or erase: {per_op:.3}");
    // A callback per 256 retired nodes, and the reclaimer's own
    // bookkeeping, come to a few hundredths.
    assert!(per_op < 0.2, "{per_op:.3} allocations per store or erase");
}
