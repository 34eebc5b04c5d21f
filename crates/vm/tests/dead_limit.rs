//! How `rcu-dead`'s dead entries go away.
//!
//! unmap.rs U4: the munmap that passes `DEAD_LIMIT` reaps every dead entry,
//! its own included, only after its own zap and shootdown. Reaping first
//! unhooked the table still holding the PTEs, so the zap missed them and no
//! shootdown covered them: a CPU kept reading through its TLB after munmap
//! returned (found by `rcuvm check`, P1).
//!
//! unmap.rs U5 (a bounded batch while a writer waits) is tested in
//! `src/mm.rs`, which can make a writer look as if it waits.

use std::sync::Arc;
use std::time::Duration;

use rcuvm::strategy::DEAD_LIMIT;
use rcuvm::{AccessError, AddressSpace, MapFlags, PAGE_SIZE, Prot, Strategy};

#[test]
fn the_munmap_past_the_dead_limit_zaps_before_it_reaps() {
    // Callbacks wait a minute, so no dead entry expires during the test.
    let rcu = rcuvm::rcu::Config::default().batch_delay(Duration::from_secs(60));
    let mm = Arc::new(AddressSpace::builder().strategy(Strategy::RcuDead).rcu_config(rcu).build());
    let anon = MapFlags::PRIVATE | MapFlags::ANONYMOUS | MapFlags::FIXED;
    let rw = Prot::READ | Prot::WRITE;
    let n = DEAD_LIMIT as u64;
    let many = mm.mmap(0x10_0000_0000, n * PAGE_SIZE, rw, anon, None, 0).unwrap();
    for i in 0..n {
        mm.munmap(many + i * PAGE_SIZE, PAGE_SIZE).unwrap();
    }
    assert_eq!(mm.vmas_in_tree() - mm.map_count(), DEAD_LIMIT, "nothing expired");
    // A page in a 2 MiB region of its own (its table can be freed), in
    // this thread's TLB.
    let a = mm.mmap(0x20_0000_0000, PAGE_SIZE, rw, anon, None, 0).unwrap();
    let mut cpu = mm.cpu();
    cpu.write(a, 7).unwrap();
    assert_eq!(cpu.read(a), Ok(7));
    mm.munmap(a, PAGE_SIZE).unwrap(); // the dead entry past the limit
    assert_eq!(mm.vmas_in_tree(), mm.map_count(), "all reaped");
    assert_eq!(cpu.read(a), Err(AccessError::MapErr), "no stale translation after munmap");
    mm.shootdown().domain().barrier();
    assert_eq!(mm.ptes_in_freed_tables(), 0, "no table freed with PTEs in it");
}
