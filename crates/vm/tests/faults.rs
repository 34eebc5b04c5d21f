//! The fault path, page tables and TLBs under every strategy: what an
//! access sees after each mm call, and that teardown frees everything.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use rcuvm::frame::file_word;
use rcuvm::uapi::{MREMAP_MAYMOVE, madv};
use rcuvm::{AccessError, AddressSpace, FileId, MapFile, MapFlags, PhysMem, Prot, Strategy};

const RW: Prot = Prot::READ.union(Prot::WRITE);
const ANON: MapFlags = MapFlags::PRIVATE.union(MapFlags::ANONYMOUS);
const P: u64 = 4096;

fn mm(s: Strategy) -> Arc<AddressSpace> {
    Arc::new(AddressSpace::with_strategy(s))
}

/// An address space whose grace periods run only when asked (a barrier, a
/// synchronize): callbacks wait a minute to batch. Under `rcu-dead` a dead
/// entry then stays until the test's own barrier, whatever the scheduler
/// does meanwhile (the reaper, mm.rs A10, erases it a grace period later).
fn mm_gp_on_demand(s: Strategy) -> Arc<AddressSpace> {
    let slow = rcuvm::rcu::Config::default().batch_delay(std::time::Duration::from_secs(60));
    Arc::new(AddressSpace::builder().strategy(s).rcu_config(slow).build())
}

fn file(inode: u64, writable: bool) -> MapFile {
    MapFile {
        id: FileId { dev_major: 8, dev_minor: 1, inode, path: Arc::from("/data/f") },
        readable: true,
        writable,
    }
}

#[test]
fn anonymous_memory_faults_in_zeroes_and_keeps_writes() {
    for s in Strategy::ALL {
        let mm = mm(s);
        let a = mm.mmap(0, 4 * P, RW, ANON, None, 0).unwrap();
        let mut cpu = mm.cpu();
        assert_eq!(cpu.read(a + 16), Ok(0), "{s}: a read maps the zero page");
        assert!(mm.smaps().contains("Rss:                   0 kB"), "{s}: the zero page is not Rss");
        cpu.write(a + 16, 7).unwrap();
        cpu.write(a + 3 * P, 9).unwrap();
        assert_eq!(cpu.read(a + 16), Ok(7), "{s}");
        let mut other = mm.cpu();
        assert_eq!(other.read(a + 3 * P), Ok(9), "{s}: another CPU sees the same page");
        assert!(mm.smaps().contains("Rss:                   8 kB"), "{s}:\n{}", mm.smaps());
        assert!(mm.smaps().contains("Anonymous:             8 kB"), "{s}");
        assert_eq!(cpu.stats().fault.faults, 3, "{s}: zero page, then copy-on-write, then a new page");
    }
}

#[test]
fn bad_accesses_give_the_signal_linux_sends() {
    for s in Strategy::ALL {
        let mm = mm(s);
        let mut cpu = mm.cpu();
        assert_eq!(cpu.read(0x1000), Err(AccessError::MapErr), "{s}");
        let a = mm.mmap(0, P, Prot::READ, ANON, None, 0).unwrap();
        assert_eq!(cpu.write(a, 1), Err(AccessError::AccErr), "{s}");
        assert_eq!(cpu.read(a + 3), Err(AccessError::Unaligned), "{s}");
        let n = mm.mmap(0, P, Prot::empty(), ANON, None, 0).unwrap();
        assert_eq!(cpu.read(n), Err(AccessError::AccErr), "{s}: PROT_NONE");
        let w = mm.mmap(0, P, Prot::WRITE, ANON, None, 0).unwrap();
        assert_eq!(cpu.read(w), Ok(0), "{s}: x86 cannot map write-only pages");
    }
}

#[test]
fn munmap_removes_the_translation_from_every_tlb_before_it_returns() {
    for s in Strategy::ALL {
        let mm = mm(s);
        let a = mm.mmap(0, 2 * P, RW, ANON, None, 0).unwrap();
        let (mut c1, mut c2) = (mm.cpu(), mm.cpu());
        c1.write(a, 5).unwrap();
        assert_eq!(c2.read(a), Ok(5), "{s}: c2 caches the translation");
        let flushes = mm.shootdown().flushes();
        mm.munmap(a, 2 * P).unwrap();
        assert!(mm.shootdown().flushes() > flushes, "{s}: a shootdown");
        assert_eq!(c2.read(a), Err(AccessError::MapErr), "{s}: no stale TLB entry");
        // mmap(); munmap(); mmap() at once: fresh memory, no stale PTE.
        let b = mm.mmap(a, 2 * P, RW, ANON | MapFlags::FIXED, None, 0).unwrap();
        assert_eq!(b, a);
        assert_eq!(c1.read(a), Ok(0), "{s}: the new mapping is fresh");
        assert_eq!(mm.phys().stats().in_use, 0, "{s}: the old frame was freed, the new one not yet touched");
    }
}

#[test]
fn a_shootdown_waits_only_for_cpus_that_may_cache_the_entries() {
    for s in Strategy::ALL {
        let mm = mm(s);
        let a = mm.mmap(0, 2 * P, RW, ANON, None, 0).unwrap();
        let mut mine = mm.cpu();
        mine.write(a, 1).unwrap();
        let remote = mm.shootdown().remote_flushes();
        mm.munmap(a, P).unwrap();
        assert_eq!(mm.shootdown().remote_flushes(), remote, "{s}: only this thread's CPU cached it");
        assert_eq!(mine.read(a), Err(AccessError::MapErr), "{s}: and it flushed by generation");
        // Another thread's CPU reads the second page: now it must wait.
        let mm2 = mm.clone();
        std::thread::spawn(move || assert_eq!(mm2.cpu().read(a + P), Ok(0))).join().unwrap();
        mm.munmap(a + P, P).unwrap();
        assert_eq!(mm.shootdown().remote_flushes(), remote + 1, "{s}");
    }
}

#[test]
fn munmap_of_untouched_memory_needs_no_shootdown() {
    let mm = mm(Strategy::VmaLock);
    let a = mm.mmap(0, 16 * P, RW, ANON, None, 0).unwrap();
    let before = mm.shootdown().flushes();
    mm.munmap(a, 16 * P).unwrap();
    assert_eq!(mm.shootdown().flushes(), before);
}

#[test]
fn mprotect_changes_what_the_pages_allow_and_keeps_them() {
    for s in Strategy::ALL {
        let mm = mm(s);
        let a = mm.mmap(0, 2 * P, RW, ANON, None, 0).unwrap();
        let mut cpu = mm.cpu();
        let mut other = mm.cpu();
        cpu.write(a, 11).unwrap();
        other.write(a, 12).unwrap(); // `other` caches a writable entry
        mm.mprotect(a, P, Prot::READ).unwrap();
        assert_eq!(other.write(a, 13), Err(AccessError::AccErr), "{s}: the writable entry was shot down");
        assert_eq!(cpu.read(a), Ok(12), "{s}");
        mm.mprotect(a, P, Prot::empty()).unwrap();
        assert_eq!(cpu.read(a), Err(AccessError::AccErr), "{s}: PROT_NONE keeps the frame but denies");
        mm.mprotect(a, 2 * P, RW).unwrap();
        assert_eq!(cpu.read(a), Ok(12), "{s}: the data survived PROT_NONE");
        other.write(a, 14).unwrap();
        assert_eq!(cpu.read(a), Ok(14), "{s}: write permission came back through a fault");
        assert_eq!(mm.map_count(), 1, "{s}: the pieces merged again");
    }
}

#[test]
fn madvise_dontneed_drops_the_pages() {
    for s in Strategy::ALL {
        let mm = mm(s);
        let a = mm.mmap(0, 2 * P, RW, ANON, None, 0).unwrap();
        let mut cpu = mm.cpu();
        cpu.write(a, 1).unwrap();
        cpu.write(a + P, 2).unwrap();
        mm.madvise(a, P, madv::DONTNEED).unwrap();
        assert_eq!(cpu.read(a), Ok(0), "{s}: zeroes again");
        assert_eq!(cpu.read(a + P), Ok(2), "{s}: outside the range, kept");
        assert_eq!(mm.phys().stats().in_use, 1, "{s}: the dropped frame was freed");
    }
}

#[test]
fn mremap_moves_the_pages_with_the_mapping() {
    for s in Strategy::ALL {
        let mm = mm(s);
        let a = mm.mmap(0, 2 * P, RW, ANON, None, 0).unwrap();
        // Something right above, so that growing must move.
        mm.mmap(a + 2 * P, P, Prot::READ, ANON | MapFlags::FIXED, None, 0).unwrap();
        let mut cpu = mm.cpu();
        cpu.write(a + P + 8, 77).unwrap();
        let b = mm.mremap(a, 2 * P, 64 * P, MREMAP_MAYMOVE, 0).unwrap();
        assert_ne!(a, b, "{s}: it had to move");
        assert_eq!(cpu.read(a + P + 8), Err(AccessError::MapErr), "{s}");
        assert_eq!(cpu.read(b + P + 8), Ok(77), "{s}: the page moved");
        assert_eq!(cpu.read(b + 40 * P), Ok(0), "{s}: the grown part is fresh");
    }
}

#[test]
fn private_file_mappings_copy_on_write_and_shared_ones_share() {
    for s in Strategy::ALL {
        let mm = mm(s);
        let f = file(42, true);
        let shared = MapFlags::SHARED;
        let priv1 = mm.mmap(0, 2 * P, RW, MapFlags::PRIVATE, Some(&f), P).unwrap();
        let sh1 = mm.mmap(0, 2 * P, RW, shared, Some(&f), 0).unwrap();
        let sh2 = mm.mmap(0, 2 * P, Prot::READ, shared, Some(&f), 0).unwrap();
        let mut cpu = mm.cpu();
        assert_eq!(cpu.read(priv1 + 8), Ok(file_word(&f.id, 1, 1)), "{s}: the file's data");
        cpu.write(priv1 + 8, 5).unwrap();
        assert_eq!(cpu.read(priv1 + 8), Ok(5), "{s}");
        assert_eq!(
            cpu.read(sh1 + P + 8),
            Ok(file_word(&f.id, 1, 1)),
            "{s}: the private write stayed private"
        );
        cpu.write(sh1 + P + 8, 6).unwrap();
        assert_eq!(cpu.read(sh2 + P + 8), Ok(6), "{s}: shared mappings share the page cache");
        assert_eq!(cpu.read(priv1 + 8), Ok(5), "{s}");
    }
}

#[test]
fn first_anonymous_fault_gives_an_anon_vma_which_decides_merging() {
    // Linux: an untouched VMA merges with a touched neighbour; two VMAs
    // touched separately (distinct anon_vmas) do not merge.
    for s in Strategy::ALL {
        let mm = mm(s);
        let a = mm.mmap(0, 3 * P, RW, ANON, None, 0).unwrap();
        mm.mprotect(a + P, P, Prot::READ).unwrap();
        assert_eq!(mm.map_count(), 3);
        let mut cpu = mm.cpu();
        cpu.write(a, 1).unwrap();
        assert!(mm.query(a).unwrap().anon().is_some(), "{s}");
        mm.mprotect(a + P, P, RW).unwrap();
        assert_eq!(mm.map_count(), 1, "{s}: untouched pieces merge with the touched one");
    }
}

#[test]
fn teardown_frees_every_frame_and_table() {
    let phys = Arc::new(PhysMem::new(1 << 16));
    for s in Strategy::ALL {
        let mm = Arc::new(AddressSpace::builder().strategy(s).phys(phys.clone()).build());
        let mut cpu = mm.cpu();
        let a = mm.mmap(0, 64 * P, RW, ANON, None, 0).unwrap();
        let far = mm.mmap(0x10_0000_0000, 4 * P, RW, ANON, None, 0).unwrap();
        for i in 0..64 {
            cpu.write(a + i * P, i).unwrap();
        }
        cpu.write(far, 1).unwrap();
        mm.munmap(a + 8 * P, 8 * P).unwrap();
        assert!(mm.page_table().tables() > 1);
        drop(cpu);
        drop(mm);
        assert_eq!(phys.stats().in_use, 0, "{s}: every anonymous frame is back");
    }
    let mm = AddressSpace::with_strategy(Strategy::RcuDead);
    let a = mm.mmap(0, 4 * P, RW, ANON, None, 0).unwrap();
    mm.munmap(a, 4 * P).unwrap();
    let tables_seen = mm.page_table().tables();
    drop(mm);
    assert!(tables_seen >= 1);
}

#[test]
fn unmapped_tables_are_unhooked_and_freed() {
    for s in Strategy::ALL {
        let mm = mm_gp_on_demand(s);
        let a = mm.mmap(0x20_0000_0000, 4 * P, RW, ANON | MapFlags::FIXED, None, 0).unwrap();
        let mut cpu = mm.cpu();
        cpu.write(a, 1).unwrap();
        assert_eq!(mm.page_table().tables(), 4, "{s}: root, PUD, PMD, PTE tables");
        assert_eq!(mm.reachable_tables(), 4, "{s}");
        assert_eq!(mm.deferred_tables(), 0, "{s}: nothing unhooked yet");
        mm.munmap(a, 4 * P).unwrap();
        if s == Strategy::RcuDead {
            // Under the dead entry until its grace period has passed.
            assert_eq!(mm.reachable_tables(), 4, "{s}: still under the dead entry");
            assert_eq!(mm.deferred_tables(), 0, "{s}: still hooked");
            assert_eq!(mm.dead_entries(), 1, "{s}");
        }
        // The munmap queued the reaper (mm.rs A10), which the barrier runs:
        // it reaps the expired dead entry with no further mm call.
        mm.domain().barrier();
        assert_eq!(mm.dead_entries(), 0, "{s}");
        // Unhooked: only the root is reachable, whatever is not freed yet
        // is deferred.
        assert_eq!(mm.reachable_tables(), 1, "{s}");
        assert_eq!(mm.deferred_tables(), mm.page_table().tables() - 1, "{s}");
        if s == Strategy::RcuRefcount {
            // S5: the last put (in the barrier above) waits for one more
            // grace period of the VMA domain before the TLB domain's.
            mm.domain().barrier();
        }
        mm.shootdown().domain().barrier();
        assert_eq!(mm.page_table().tables(), 1, "{s}: only the root is left");
        assert_eq!(mm.deferred_tables(), 0, "{s}: all freed");
    }
}

#[test]
fn rcu_dead_reserves_the_range_until_a_grace_period_passed() {
    let mm = mm_gp_on_demand(Strategy::RcuDead);
    let a = mm.mmap(0, 4 * P, RW, ANON, None, 0).unwrap();
    let mut cpu = mm.cpu();
    cpu.write(a, 1).unwrap();
    let before = mm.munmap_syncs().0;
    mm.munmap(a, 4 * P).unwrap();
    assert_eq!(mm.munmap_syncs().0, before, "munmap never waits for a grace period");
    assert_eq!(mm.map_count(), 0, "a dead entry is not a VMA");
    assert!(mm.maps().is_empty(), "nor shown");
    assert_eq!(cpu.read(a), Err(AccessError::MapErr));
    // Whatever placement picks now, it is not the dead range: no grace
    // period has run since the munmap.
    let b = mm.mmap(0, 4 * P, RW, ANON, None, 0).unwrap();
    mm.domain().barrier();
    // MAP_FIXED over a (possibly still live) dead entry synchronises first
    // and works.
    let c = mm.mmap(a, 4 * P, RW, ANON | MapFlags::FIXED, None, 0).unwrap();
    assert_eq!(c, a);
    assert_eq!(cpu.read(a), Ok(0));
    assert_ne!(b, a);
    assert!(mm.query(a).is_some() && mm.query(b).is_some());
}

#[test]
fn rcu_dead_entries_stay_bounded_in_a_munmap_storm() {
    // Callbacks wait a minute to batch: no grace period runs unless the
    // munmaps run one (unmap.rs U8, past DEAD_HELP entries) or wait for
    // one (U4, past DEAD_LIMIT; with a reader in the way, tested in
    // tests/dead_limit.rs).
    let slow = rcuvm::rcu::Config::default().batch_delay(std::time::Duration::from_secs(60));
    let mm = AddressSpace::builder().strategy(Strategy::RcuDead).rcu_config(slow).build();
    let pages = 3 * rcuvm::strategy::DEAD_LIMIT as u64;
    let a = mm.mmap(0, pages * P, RW, ANON, None, 0).unwrap();
    // Unmap every other page: each leaves a dead entry.
    let mut most = 0;
    for i in (0..pages).step_by(2) {
        mm.munmap(a + i * P, P).unwrap();
        let dead = mm.vmas_in_tree() - mm.map_count();
        most = most.max(dead);
    }
    assert!(most >= rcuvm::strategy::DEAD_HELP, "the helping point was not reached ({most})");
    assert!(most <= rcuvm::strategy::DEAD_LIMIT + 1, "{most} dead entries at once");
    assert_eq!(mm.map_count() as u64, pages / 2);
    assert!(mm.dead_helps() > 0, "the munmaps ended grace periods themselves");
    assert_eq!(mm.munmap_syncs().0, 0, "with no reader in the way, no munmap waited");
}

#[test]
fn rcu_sync_munmap_waits_for_a_grace_period() {
    let mm = mm(Strategy::RcuSync);
    let a = mm.mmap(0, 4 * P, RW, ANON, None, 0).unwrap();
    mm.munmap(a, 4 * P).unwrap();
    assert_eq!(mm.munmap_syncs().0, 1);
    assert_eq!(mm.mmap(0, 4 * P, RW, ANON, None, 0), Ok(a), "the range is reused at once");
}

#[test]
fn the_phys_counters_track_frames() {
    let mm = mm(Strategy::VmaLock);
    let a = mm.mmap(0, 8 * P, RW, ANON, None, 0).unwrap();
    let mut cpu = mm.cpu();
    for i in 0..8 {
        cpu.write(a + i * P, 1).unwrap();
    }
    assert_eq!(mm.phys().stats().in_use, 8);
    let f = mm.phys().frame(mm.translate(a).pfn());
    assert!(f.generation.load(Ordering::Relaxed) < u64::MAX);
}

/// fault.rs FL6: a CPU's cached VMA is used again only while it is still
/// the tree's; every kind of replacement sends the next fault to the tree.
#[test]
fn a_cached_vma_is_never_used_after_the_mapping_changed() {
    for s in Strategy::ALL {
        let mm = mm(s);
        let mut cpu = mm.cpu();
        let a = mm.mmap(0, 8 * P, RW, ANON, None, 0).unwrap();
        cpu.write(a, 1).unwrap(); // the VMA is now the CPU's cached one
        // Rights taken away on the untouched pages (a split).
        mm.mprotect(a + 4 * P, 4 * P, Prot::READ).unwrap();
        assert_eq!(cpu.write(a + 5 * P, 2), Err(AccessError::AccErr), "{s}: after a split");
        cpu.write(a + P, 3).unwrap();
        // The whole range unmapped: nothing maps it any more.
        mm.munmap(a, 8 * P).unwrap();
        assert_eq!(cpu.write(a + 2 * P, 4), Err(AccessError::MapErr), "{s}: after munmap");
        // Mapped again over the same range, read-only this time.
        let b = mm.mmap(a, 8 * P, Prot::READ, ANON | MapFlags::FIXED, None, 0).unwrap();
        assert_eq!(b, a);
        assert_eq!(cpu.write(a + 3 * P, 5), Err(AccessError::AccErr), "{s}: after MAP_FIXED");
        assert_eq!(cpu.read(a + 3 * P), Ok(0), "{s}: a fresh mapping reads zero");
        // Moved away: the old range faults, the new one has the pages.
        mm.mprotect(a, 8 * P, RW).unwrap();
        cpu.write(a + 6 * P, 6).unwrap();
        let c = mm.mremap(a, 8 * P, 8 * P, MREMAP_MAYMOVE, 0).unwrap();
        if c != a {
            assert_eq!(cpu.read(a + 6 * P), Err(AccessError::MapErr), "{s}: after a move");
        }
        assert_eq!(cpu.read(c + 6 * P), Ok(6), "{s}: the page moved with the mapping");
    }
}

/// mm.rs A11: an mm call inside an access of the same address space is a
/// clear panic, made before it takes anything: the address space works
/// on (it deadlocked, or left readers spinning, before).
#[test]
fn an_mm_call_inside_an_access_panics_and_changes_nothing() {
    use std::panic::{AssertUnwindSafe, catch_unwind};
    let mm = Arc::new(AddressSpace::with_strategy(Strategy::RcuDead));
    let rw = Prot::READ | Prot::WRITE;
    let fixed = MapFlags::PRIVATE | MapFlags::ANONYMOUS | MapFlags::FIXED;
    let a = mm.mmap(0x1000_0000, 4 * 4096, rw, fixed, None, 0).unwrap();
    let mut cpu = mm.cpu();
    cpu.write(a, 7).unwrap();
    let before = mm.maps();
    let r = catch_unwind(AssertUnwindSafe(|| {
        let _ = cpu.access(a, false, |_| {
            let _ = mm.mmap(a, 4096, rw, fixed, None, 0);
        });
    }));
    let msg = r.unwrap_err();
    let msg = msg.downcast_ref::<String>().map(String::as_str).or(msg.downcast_ref::<&str>().copied());
    assert!(msg.is_some_and(|m| m.contains("inside a Cpu::access")), "{msg:?}");
    assert_eq!(mm.maps(), before);
    assert_eq!(mm.munmap(a, 4096), Ok(()));
    assert_eq!(mm.query(a), None);
}

#[test]
fn the_last_handle_may_be_dropped_in_its_own_callback() {
    // mm.rs A13: the teardown moves to a thread of its own; it used to
    // panic in the barrier (caught as a callback panic) and stop halfway,
    // leaving the frames in use.
    for s in Strategy::ALL {
        let phys = Arc::new(PhysMem::new(1 << 12));
        let mm = Arc::new(AddressSpace::builder().strategy(s).phys(phys.clone()).build());
        let a = mm.mmap(0, 16 * P, RW, ANON, None, 0).unwrap();
        let mut cpu = mm.cpu();
        for i in 0..16 {
            cpu.write(a + i * P, i).unwrap();
        }
        drop(cpu);
        assert!(phys.stats().in_use >= 16, "{s}");
        let d = mm.domain().clone();
        let held = std::sync::Mutex::new(Some(mm));
        d.call(move || drop(held.lock().unwrap().take()));
        d.barrier();
        let t0 = std::time::Instant::now();
        while phys.stats().in_use > 1 && t0.elapsed() < std::time::Duration::from_secs(10) {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        assert_eq!(d.stats().callbacks_panicked, 0, "{s}");
        assert!(
            phys.stats().in_use <= 1,
            "{s}: {} frames still in use after the teardown",
            phys.stats().in_use
        );
    }
}
