//! Nothing leaks: after churn, dropping the tree and its domain returns every
//! byte (nodes, pooled blocks, retired batches, values) to the allocator.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::Arc;
use std::sync::atomic::{AtomicIsize, Ordering};

use rcuvm_maple::MapleTree;
use rcuvm_rcu::Domain;

struct Counting;
static LIVE: AtomicIsize = AtomicIsize::new(0);

// SAFETY: forwards to the system allocator unchanged; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        LIVE.fetch_add(l.size() as isize, Ordering::SeqCst);
        // SAFETY: same contract as ours.
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        LIVE.fetch_sub(l.size() as isize, Ordering::SeqCst);
        // SAFETY: same contract as ours.
        unsafe { System.dealloc(p, l) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

#[test]
fn dropping_tree_and_domain_frees_everything() {
    // Warm up what the runtime allocates once (thread-locals, the reclaimer's
    // first spawn): measure a second round against the first's baseline.
    for round in 0..2 {
        let before = LIVE.load(Ordering::SeqCst);
        {
            let domain = Arc::new(Domain::new());
            let tree: MapleTree<Arc<Vec<u64>>> = MapleTree::new(domain.clone());
            let mut x = 7u64;
            for i in 0..20_000u64 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let a = (x % 5000) * 0x1000;
                let mut w = tree.write();
                match i % 3 {
                    0 => drop(w.store(a..a + 0x3000, Arc::new(vec![i; 4]))),
                    1 => drop(w.erase(a..a + 0x2000)),
                    _ => drop(w.insert(a..a + 0x1000, Arc::new(vec![i]))),
                }
            }
            tree.validate().unwrap();
            drop(tree);
            domain.barrier();
        }
        let after = LIVE.load(Ordering::SeqCst);
        if round == 1 {
            assert_eq!(after, before, "{} bytes leaked", after - before);
        }
    }
}
