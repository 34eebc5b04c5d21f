//! write.rs R10: a tree made with `MapleTree::with_free` passes every value
//! a store or erase retired to its `free` function after a grace period,
//! and to no one else; values still in the tree are dropped with it.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use rcuvm_maple::MapleTree;
use rcuvm_rcu::Domain;

static FREED: AtomicUsize = AtomicUsize::new(0);
static SUM: AtomicUsize = AtomicUsize::new(0);

fn free(v: Arc<usize>) {
    FREED.fetch_add(1, Ordering::Relaxed);
    SUM.fetch_add(*v, Ordering::Relaxed);
}

#[test]
fn retired_values_go_to_free_after_a_grace_period() {
    let domain = Arc::new(Domain::new());
    let t: MapleTree<Arc<usize>> = MapleTree::with_free(domain.clone(), free);
    let witness = Arc::new(1000);
    {
        let mut w = t.write();
        for i in 0..100u64 {
            w.insert(i * 10..i * 10 + 5, Arc::new(i as usize)).unwrap();
        }
        // Overwrite 10 (values 0..10 retired) and erase 10 more (10..20).
        for i in 0..10u64 {
            w.store(i * 10..i * 10 + 5, Arc::new(0)).unwrap();
        }
        for i in 10..20u64 {
            w.erase(i * 10..i * 10 + 5).unwrap();
        }
        w.store(2000..2005, witness.clone()).unwrap();
        w.flush();
    }
    domain.barrier();
    assert_eq!(FREED.load(Ordering::Relaxed), 20, "each retired value, once");
    assert_eq!(SUM.load(Ordering::Relaxed), (0..20).sum::<usize>());
    assert_eq!(Arc::strong_count(&witness), 2, "a value in the tree is not freed");
    drop(t);
    assert_eq!(Arc::strong_count(&witness), 1, "dropped with the tree");
    assert_eq!(FREED.load(Ordering::Relaxed), 20, "not passed to free");
}
