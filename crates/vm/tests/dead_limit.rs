//! How `rcu-dead`'s dead entries go away.
//!
//! unmap.rs U4: the munmap that passes `DEAD_LIMIT` reaps every dead entry,
//! its own included, only after its own zap and shootdown. Reaping first
//! unhooked the table still holding the PTEs, so the zap missed them and no
//! shootdown covered them: a CPU kept reading through its TLB after munmap
//! returned (found by `rcuvm check`, P1).
//!
//! unmap.rs U8: dead entries that pile up because nobody runs a grace
//! period get one from the munmaps themselves, without a wait; with a
//! reader in the way, the munmap at the bound waits for it.
//!
//! unmap.rs U5 (a bounded batch per call) and the reaper (mm.rs A10) are
//! tested in `src/mm.rs`.

use std::sync::Arc;
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use rcuvm::strategy::DEAD_LIMIT;
use rcuvm::{AccessError, AddressSpace, MapFlags, PAGE_SIZE, Prot, Strategy};

const ANON_FIXED: MapFlags = MapFlags::PRIVATE.union(MapFlags::ANONYMOUS).union(MapFlags::FIXED);
const RW: Prot = Prot::READ.union(Prot::WRITE);

/// An `rcu-dead` address space whose callbacks wait a minute to batch: no
/// grace period runs unless a caller runs one (as with a reclaimer that
/// gets no CPU on a machine whose CPUs are all busy).
fn starved_mm() -> Arc<AddressSpace> {
    let rcu = rcuvm::rcu::Config::default().batch_delay(Duration::from_secs(60));
    Arc::new(AddressSpace::builder().strategy(Strategy::RcuDead).rcu_config(rcu).build())
}

#[test]
fn the_munmap_past_the_dead_limit_zaps_before_it_reaps() {
    let mm = starved_mm();
    let n = DEAD_LIMIT as u64;
    let many = mm.mmap(0x10_0000_0000, n * PAGE_SIZE, RW, ANON_FIXED, None, 0).unwrap();
    // A reader in its section keeps every grace period from ending, so the
    // munmaps' tries to end one (unmap.rs U8) fail.
    let (inside, release, reader) = reader_inside(&mm);
    inside.recv().unwrap();
    for i in 0..n {
        mm.munmap(many + i * PAGE_SIZE, PAGE_SIZE).unwrap();
    }
    assert_eq!(mm.vmas_in_tree() - mm.map_count(), DEAD_LIMIT, "nothing expired");
    release.send(()).unwrap();
    reader.join().unwrap();
    // A page in a 2 MiB region of its own (its table can be freed), in
    // this thread's TLB.
    let a = mm.mmap(0x20_0000_0000, PAGE_SIZE, RW, ANON_FIXED, None, 0).unwrap();
    let mut cpu = mm.cpu();
    cpu.write(a, 7).unwrap();
    assert_eq!(cpu.read(a), Ok(7));
    mm.munmap(a, PAGE_SIZE).unwrap(); // the dead entry past the limit
    assert_eq!(mm.vmas_in_tree(), mm.map_count(), "all reaped");
    assert_eq!(cpu.read(a), Err(AccessError::MapErr), "no stale translation after munmap");
    mm.shootdown().domain().barrier();
    assert_eq!(mm.ptes_in_freed_tables(), 0, "no table freed with PTEs in it");
}

/// A thread inside a read-side section of `mm`'s domain: says so on the
/// first channel, leaves when told on the second.
fn reader_inside(mm: &Arc<AddressSpace>) -> (mpsc::Receiver<()>, mpsc::Sender<()>, thread::JoinHandle<()>) {
    let (in_tx, in_rx) = mpsc::channel();
    let (out_tx, out_rx) = mpsc::channel::<()>();
    let mm = mm.clone();
    let h = thread::spawn(move || {
        let _g = mm.domain().read();
        in_tx.send(()).unwrap();
        out_rx.recv().unwrap();
    });
    (in_rx, out_tx, h)
}

#[test]
fn piled_up_dead_entries_get_their_grace_period_without_a_wait() {
    let mm = starved_mm();
    let n = 2 * DEAD_LIMIT as u64;
    let many = mm.mmap(0x10_0000_0000, n * PAGE_SIZE, RW, ANON_FIXED, None, 0).unwrap();
    let mut most = 0;
    for i in 0..n {
        mm.munmap(many + i * PAGE_SIZE, PAGE_SIZE).unwrap();
        most = most.max(mm.dead_entries());
    }
    assert_eq!(mm.munmap_syncs().0, 0, "no munmap waited");
    assert!(mm.dead_helps() > 0, "the munmaps ended grace periods themselves");
    assert!(most < DEAD_LIMIT / 2, "dead entries stayed near DEAD_HELP: at most {most}");

    // With a reader in the way, the tries fail and the munmap past the
    // bound waits for it.
    let (inside, release, reader) = reader_inside(&mm);
    inside.recv().unwrap();
    assert!(!mm.domain().try_complete(mm.domain().get_state()), "a reader inside: a try fails");
    let helps = mm.dead_helps();
    let base = 0x40_0000_0000;
    let pages = 2 * DEAD_LIMIT as u64;
    let more = mm.mmap(base, pages * PAGE_SIZE, RW, ANON_FIXED, None, 0).unwrap();
    // Up to the bound: phase 1's expired entries go 16 a call meanwhile.
    let mut i = 0;
    while mm.dead_entries() < DEAD_LIMIT {
        mm.munmap(more + i * PAGE_SIZE, PAGE_SIZE).unwrap();
        i += 1;
        assert!(i < pages, "the bound was never reached");
    }
    assert_eq!(mm.dead_helps(), helps, "no try succeeded with the reader inside");
    let syncs = mm.munmap_syncs().0;
    let unmapper = {
        let mm = mm.clone();
        thread::spawn(move || mm.munmap(more + i * PAGE_SIZE, PAGE_SIZE).unwrap())
    };
    thread::sleep(Duration::from_millis(50));
    assert!(!unmapper.is_finished(), "the munmap past the bound waits while the reader is inside");
    release.send(()).unwrap();
    unmapper.join().unwrap();
    reader.join().unwrap();
    // Its wait, or (if it got a CPU only after the reader left) its try.
    let ended = mm.munmap_syncs().0 - syncs + mm.dead_helps() - helps;
    assert_eq!(ended, 1, "one grace period for the munmap past the bound");
    assert_eq!(mm.dead_entries(), 0, "and it reaped them all");
}
