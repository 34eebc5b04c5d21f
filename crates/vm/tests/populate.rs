//! Population: `MAP_POPULATE`, `MAP_LOCKED`, `mlock`, `mlockall`, `brk`
//! and `mremap` under `MCL_FUTURE`, `mprotect` of a locked VMA, and
//! `MADV_POPULATE_READ`/`WRITE` fault pages in through the fault path
//! (mlock.rs L3, madvise.rs D6, fault.rs FL9), so that smaps' `Rss` and
//! the page tables show them and a later access takes no fault; and the
//! two bounds that make it safe: overcommit (mmap.rs P10) and page-table
//! memory (fault.rs FL10). Errnos are the host kernel's (6.18), probed
//! with a C program; the kernel-differential test compares `Rss` against
//! the kernel on random sequences too.

use std::sync::Arc;

use rcuvm::uapi::{MCL_CURRENT, MCL_FUTURE, MLOCK_ONFAULT, madv};
use rcuvm::{AddressSpace, Errno, MapFlags, PhysMem, Prot, Strategy};

#[path = "common/mm.rs"]
mod common_mm;
use common_mm::{A, P, fixed, rw};

/// smaps' `(Rss, Anonymous)` of the VMA holding `addr`, in pages.
fn rss(mm: &AddressSpace, addr: u64) -> (u64, u64) {
    let text = mm.smaps();
    let mut hit = false;
    let (mut r, mut a) = (None, None);
    for l in text.lines() {
        if let Some((range, _)) = l.split_once(' ') {
            if let Some((s, e)) = range.split_once('-') {
                if let (Ok(s), Ok(e)) = (u64::from_str_radix(s, 16), u64::from_str_radix(e, 16)) {
                    hit = s <= addr && addr < e;
                    continue;
                }
            }
        }
        let kb = |l: &str, key: &str| {
            l.strip_prefix(key).map(|v| v.trim().trim_end_matches(" kB").parse::<u64>().unwrap())
        };
        if hit {
            r = r.or(kb(l, "Rss:"));
            a = a.or(kb(l, "Anonymous:"));
        }
    }
    (r.expect("a VMA at addr") / 4, a.unwrap() / 4)
}

/// Pages of `[addr, addr + len)` with a present PTE.
fn present(mm: &AddressSpace, addr: u64, len: u64) -> u64 {
    (addr..addr + len).step_by(P as usize).filter(|&a| mm.translate(a).present()).count() as u64
}

#[test]
fn map_populate_faults_every_page_in_and_accesses_then_take_no_fault() {
    for s in Strategy::ALL {
        let mm = Arc::new(AddressSpace::with_strategy(s));
        let pop = fixed() | MapFlags::POPULATE;
        // Private writable: write faults, a new anonymous page each.
        mm.mmap(A, 8 * P, rw(), pop, None, 0).unwrap();
        assert_eq!(rss(&mm, A), (8, 8), "{s}");
        assert!(mm.query(A).unwrap().anon_vma.is_some(), "{s}");
        assert_eq!(mm.phys().stats().in_use, 8, "{s}");
        let mut cpu = mm.cpu();
        for i in 0..8 {
            cpu.write(A + i * P, i).unwrap();
        }
        assert_eq!(cpu.stats().fault.faults, 0, "{s}: populated pages take no fault");
        // Read-only: read faults map the zero page, which Rss does not count.
        mm.mmap(A + 16 * P, 4 * P, Prot::READ, pop, None, 0).unwrap();
        assert_eq!(rss(&mm, A + 16 * P), (0, 0), "{s}");
        assert_eq!(present(&mm, A + 16 * P, 4 * P), 4, "{s}");
        assert_eq!(mm.translate(A + 16 * P).pfn(), mm.phys().zero_pfn(), "{s}");
        assert_eq!(cpu.read(A + 16 * P), Ok(0));
        assert_eq!(cpu.stats().fault.faults, 0, "{s}");
        // MAP_NONBLOCK turns MAP_POPULATE off; PROT_NONE cannot be faulted.
        mm.mmap(A + 32 * P, 4 * P, rw(), pop | MapFlags::NONBLOCK, None, 0).unwrap();
        assert_eq!(present(&mm, A + 32 * P, 4 * P), 0, "{s}");
        assert_eq!(mm.mmap(A + 40 * P, 4 * P, Prot::empty(), pop, None, 0), Ok(A + 40 * P));
        assert_eq!(present(&mm, A + 40 * P, 4 * P), 0, "{s}");
        // Shared anonymous memory: read faults of the shmem pages, counted
        // in Rss but not as anonymous.
        let sh = MapFlags::SHARED | MapFlags::ANONYMOUS | MapFlags::FIXED | MapFlags::POPULATE;
        mm.mmap(A + 48 * P, 2 * P, rw(), sh, None, 0).unwrap();
        assert_eq!(rss(&mm, A + 48 * P), (2, 0), "{s}");
        cpu.write(A + 48 * P, 7).unwrap();
        assert_eq!(cpu.stats().fault.faults, 0, "{s}: a shared page is mapped writable");
    }
}

#[test]
fn mlock_and_its_relatives_populate_and_onfault_does_not() {
    let mm = AddressSpace::new();
    mm.mmap(A, 4 * P, rw(), fixed(), None, 0).unwrap();
    mm.mlock2(A, 2 * P, MLOCK_ONFAULT).unwrap();
    assert_eq!(present(&mm, A, 4 * P), 0);
    mm.mlock(A + 2 * P, 2 * P).unwrap();
    assert_eq!(present(&mm, A, 4 * P), 2, "only the VM_LOCKED part, not the VM_LOCKONFAULT one");
    mm.munlock(A, 4 * P).unwrap();
    assert_eq!(present(&mm, A, 4 * P), 2, "munlock keeps the pages");
    // MAP_LOCKED populates as MAP_POPULATE does.
    mm.mmap(A + 8 * P, 2 * P, rw(), fixed() | MapFlags::LOCKED, None, 0).unwrap();
    assert_eq!(rss(&mm, A + 8 * P), (2, 2));
    // A locked read-only VMA holds zero pages; made writable, mprotect
    // breaks their copy-on-write (mprotect.rs Q5).
    mm.mmap(A + 16 * P, 3 * P, Prot::READ, fixed() | MapFlags::LOCKED, None, 0).unwrap();
    assert_eq!((rss(&mm, A + 16 * P), present(&mm, A + 16 * P, 3 * P)), ((0, 0), 3));
    mm.mprotect(A + 16 * P, 3 * P, rw()).unwrap();
    assert_eq!(rss(&mm, A + 16 * P), (3, 3));
    // A locked VMA that mremap grows is populated over its new part (R6).
    assert_eq!(mm.mremap(A + 8 * P, 2 * P, 4 * P, 0, 0), Ok(A + 8 * P));
    assert_eq!(rss(&mm, A + 8 * P), (4, 4));
}

#[test]
fn mlockall_populates_every_accessible_vma_and_future_mappings() {
    let mm = AddressSpace::new();
    mm.mmap(A, 2 * P, rw(), fixed(), None, 0).unwrap();
    mm.mmap(A + 4 * P, 2 * P, Prot::empty(), fixed(), None, 0).unwrap();
    mm.mmap(A + 8 * P, 2 * P, Prot::READ, fixed(), None, 0).unwrap();
    mm.mlockall(MCL_CURRENT | MCL_FUTURE).unwrap();
    assert_eq!(rss(&mm, A), (2, 2));
    assert_eq!(present(&mm, A + 4 * P, 2 * P), 0, "PROT_NONE is skipped; the rest goes on");
    assert_eq!(present(&mm, A + 8 * P, 2 * P), 2, "zero pages");
    // MCL_FUTURE: new mappings and the heap are faulted in.
    let b = mm.mmap(0, 3 * P, rw(), MapFlags::PRIVATE | MapFlags::ANONYMOUS, None, 0).unwrap();
    assert_eq!(rss(&mm, b), (3, 3));
    mm.set_start_brk(0x5000_0000).unwrap();
    let (start, _) = mm.brk_range();
    assert_eq!(mm.brk(start + 2 * P), start + 2 * P);
    assert_eq!(rss(&mm, start), (2, 2));
}

#[test]
fn madvise_populate_matches_the_kernels_answers() {
    // Each case as the host kernel answered it (6.18, a C probe).
    let mm = AddressSpace::new();
    let b = A;
    mm.mmap(b, 16 * P, Prot::empty(), fixed(), None, 0).unwrap();
    mm.mmap(b, 2 * P, rw(), fixed(), None, 0).unwrap();
    mm.munmap(b + 2 * P, P).unwrap();
    mm.mmap(b + 3 * P, 2 * P, rw(), fixed(), None, 0).unwrap();
    let before = mm.maps();
    let pop = |a: u64, len: u64, write: bool| {
        mm.madvise(a, len, if write { madv::POPULATE_WRITE } else { madv::POPULATE_READ })
    };
    // A hole stops it with ENOMEM; the pages before it stay.
    assert_eq!(pop(b, 5 * P, true), Err(Errno::Enomem));
    assert_eq!((present(&mm, b, 2 * P), present(&mm, b + 3 * P, 2 * P)), (2, 0));
    assert_eq!(pop(b + 2 * P, P, false), Err(Errno::Enomem));
    // PROT_NONE; READ without VM_READ; WRITE without VM_WRITE: EINVAL.
    assert_eq!(pop(b + 5 * P, P, false), Err(Errno::Einval));
    assert_eq!(pop(b + 5 * P, P, true), Err(Errno::Einval));
    mm.mprotect(b + 6 * P, P, Prot::READ).unwrap();
    assert_eq!(pop(b + 6 * P, P, true), Err(Errno::Einval));
    assert_eq!(pop(b + 6 * P, P, false), Ok(()));
    assert_eq!(mm.translate(b + 6 * P).pfn(), mm.phys().zero_pfn());
    mm.mprotect(b + 7 * P, P, Prot::WRITE).unwrap();
    assert_eq!(pop(b + 7 * P, P, false), Err(Errno::Einval), "x86 reads with any right, GUP does not");
    assert_eq!(pop(b + 7 * P, P, true), Ok(()));
    assert_eq!(rss(&mm, b + 7 * P), (1, 1));
    mm.mprotect(b + 8 * P, P, Prot::EXEC).unwrap();
    assert_eq!(pop(b + 8 * P, P, false), Err(Errno::Einval));
    // Writable then PROT_NONE: the first page populated, then EINVAL.
    mm.mprotect(b + 9 * P, P, rw()).unwrap();
    assert_eq!(pop(b + 9 * P, 2 * P, true), Err(Errno::Einval));
    assert_eq!(present(&mm, b + 9 * P, P), 1);
    // The generic checks.
    assert_eq!(pop(b + 1, P, false), Err(Errno::Einval));
    assert_eq!(pop(b, 0, false), Ok(()));
    assert_eq!(pop(b + 2 * P, 0, false), Ok(()));
    assert_eq!(pop(b, 0u64.wrapping_sub(P), false), Err(Errno::Einval));
    assert_eq!(pop(0x7fff_ffff_f000, 2 * P, false), Err(Errno::Enomem));
    assert_eq!(pop(0x1_0000, P, false), Err(Errno::Enomem));
    // A locked VMA is populated all the same.
    assert_eq!(mm.mlock(b + 11 * P, P), Err(Errno::Enomem), "PROT_NONE: locked, not faulted (L3)");
    mm.mprotect(b + 11 * P, P, rw()).unwrap();
    assert_eq!(pop(b + 11 * P, P, true), Ok(()));
    // A read of private writable memory maps the zero page.
    assert_eq!(pop(b + 3 * P, 2 * P, false), Ok(()));
    assert_eq!((rss(&mm, b + 3 * P), present(&mm, b + 3 * P, 2 * P)), ((0, 0), 2));
    // Shared memory: WRITE needs VM_WRITE; READ maps the shmem page.
    let s = mm.mmap(0, 2 * P, Prot::READ, MapFlags::SHARED | MapFlags::ANONYMOUS, None, 0).unwrap();
    assert_eq!(pop(s, P, true), Err(Errno::Einval));
    assert_eq!(pop(s, P, false), Ok(()));
    assert_eq!(rss(&mm, s), (1, 0));
    // No stack grows for it.
    let d =
        mm.mmap(0, P, rw(), MapFlags::PRIVATE | MapFlags::ANONYMOUS | MapFlags::GROWSDOWN, None, 0).unwrap();
    assert_eq!(pop(d - P, P, false), Err(Errno::Enomem));
    assert_eq!(mm.query(d).unwrap().start, d);
    // Population changes pages, never VMAs (the probe's mprotects aside).
    let lines = |m: &str| m.lines().filter(|l| l.starts_with("10000000-")).count();
    assert_eq!(lines(&before), 1);
}

#[test]
fn out_of_frames_population_stops_with_the_callers_errno() {
    // 512 frames (one chunk), the zero page among them.
    let phys = Arc::new(PhysMem::new(1));
    let mm = AddressSpace::builder().phys(phys.clone()).build();
    assert_eq!(phys.capacity(), 512);
    let nr = MapFlags::NORESERVE;
    // mmap ignores population errors.
    mm.mmap(A, 600 * P, rw(), fixed() | nr | MapFlags::POPULATE, None, 0).unwrap();
    let got = present(&mm, A, 600 * P);
    assert!(got > 400 && got < 512, "populated until frames ran out: {got}");
    mm.munmap(A, 600 * P).unwrap();
    mm.mmap(A, 600 * P, rw(), fixed() | nr, None, 0).unwrap();
    assert_eq!(mm.madvise(A, 600 * P, madv::POPULATE_WRITE), Err(Errno::Enomem));
    mm.munmap(A, 600 * P).unwrap();
    mm.mmap(A, 600 * P, rw(), fixed() | nr, None, 0).unwrap();
    // __mlock_posix_error_return(): ENOMEM becomes EAGAIN; the VMA is locked.
    assert_eq!(mm.mlock(A, 600 * P), Err(Errno::Eagain));
    assert!(mm.query(A).unwrap().flags.contains(rcuvm::VmFlags::LOCKED));
    mm.munmap(A, 600 * P).unwrap();
    // The frames come back: population works again.
    mm.mmap(A, 8 * P, rw(), fixed() | MapFlags::POPULATE, None, 0).unwrap();
    assert_eq!(rss(&mm, A), (8, 8));
}

#[test]
fn page_tables_count_against_physical_memory() {
    // A read-only mapping needs no frames (the zero page), but one leaf
    // table per 2 MiB: populating 1 TiB of it stops when the tables fill
    // memory (FL10), where it used to allocate tables without bound.
    let phys = Arc::new(PhysMem::new(1));
    let mm = AddressSpace::builder().strategy(Strategy::MmapLock).phys(phys.clone()).build();
    let len = 1u64 << 40;
    mm.mmap(A, len, Prot::READ, fixed(), None, 0).unwrap();
    assert_eq!(mm.madvise(A, len, madv::POPULATE_READ), Err(Errno::Enomem));
    let tables = mm.page_table().tables();
    assert!(tables <= phys.capacity() + 3, "{tables} tables for 512 frames of memory");
    assert_eq!(mm.mlock(A, len), Err(Errno::Eagain));
    assert!(mm.page_table().tables() <= phys.capacity() + 3);
    // Frames and tables share the memory: after the tables, no frame fits.
    mm.mmap(A + len, P, rw(), fixed() | MapFlags::POPULATE, None, 0).unwrap();
    assert!(present(&mm, A + len, P) <= 1);
    // Unmapping frees the tables (after grace periods: pgtable.rs PT5);
    // the memory is usable again.
    mm.munmap(A, len).unwrap();
    mm.domain().barrier();
    mm.shootdown().domain().barrier();
    assert!(mm.page_table().tables() < 8, "{} tables left", mm.page_table().tables());
    mm.mmap(A, 4 * P, rw(), fixed() | MapFlags::POPULATE, None, 0).unwrap();
    assert_eq!(rss(&mm, A), (4, 4));
}

#[test]
fn overcommit_refuses_one_charge_larger_than_memory() {
    let phys = Arc::new(PhysMem::new(1));
    let mm = AddressSpace::builder().phys(phys).build();
    let big = 513 * P;
    let anon = MapFlags::PRIVATE | MapFlags::ANONYMOUS;
    // Charged: private writable, shared anonymous.
    assert_eq!(mm.mmap(A, big, rw(), fixed(), None, 0), Err(Errno::Enomem));
    assert_eq!(mm.mmap(0, big, rw(), anon, None, 0), Err(Errno::Enomem));
    let shared = MapFlags::SHARED | MapFlags::ANONYMOUS;
    assert_eq!(mm.mmap(0, big, Prot::READ, shared, None, 0), Err(Errno::Enomem));
    assert_eq!(mm.map_count(), 0);
    // Not charged: MAP_NORESERVE, read-only private memory.
    mm.mmap(A, big, rw(), fixed() | MapFlags::NORESERVE, None, 0).unwrap();
    mm.mmap(0, big, Prot::READ, shared | MapFlags::NORESERVE, None, 0).unwrap();
    let ro = mm.mmap(0, big, Prot::READ, anon, None, 0).unwrap();
    // mprotect charges what it makes writable: refused, nothing changed.
    let before = mm.maps();
    assert_eq!(mm.mprotect(ro, big, rw()), Err(Errno::Enomem));
    assert_eq!(mm.maps(), before);
    assert_eq!(mm.mprotect(ro, 512 * P, rw()), Ok(()));
    // A MAP_FIXED replacement is charged less what it replaces: 700 pages
    // over 300 charged ones fit 512 frames; over 300 uncharged ones not.
    mm.munmap(A, big).unwrap();
    mm.mmap(A, 300 * P, rw(), fixed(), None, 0).unwrap();
    assert_eq!(mm.mmap(A, 700 * P, rw(), fixed(), None, 0), Ok(A));
    mm.munmap(A, 700 * P).unwrap();
    mm.mmap(A, 300 * P, Prot::READ, fixed(), None, 0).unwrap();
    assert_eq!(mm.mmap(A, 700 * P, rw(), fixed(), None, 0), Err(Errno::Enomem));
    // mremap charges the growth of a charged VMA.
    let g = mm.mmap(0, 2 * P, rw(), anon, None, 0).unwrap();
    assert_eq!(mm.mremap(g, 2 * P, 2 * P + big, rcuvm::uapi::MREMAP_MAYMOVE, 0), Err(Errno::Enomem));
    assert_eq!(mm.mremap(g, 2 * P, 100 * P, rcuvm::uapi::MREMAP_MAYMOVE, 0).map(|_| ()), Ok(()));
    // brk: a refused growth keeps the break.
    mm.set_start_brk(0x5000_0000).unwrap();
    let (start, _) = mm.brk_range();
    assert_eq!(mm.brk(start + big), start);
    assert_eq!(mm.brk(start + P), start + P);
}

/// A 512-frame address space.
fn small() -> AddressSpace {
    AddressSpace::builder().phys(Arc::new(PhysMem::new(1))).build()
}

#[test]
fn a_refused_fixed_mapping_leaves_what_linux_leaves() {
    // Probed on the host with 30 GiB (a review's C program): a private
    // writable MAP_FIXED mapping refused by overcommit leaves the VMA it
    // overlaps split at its start; a shared one leaves a hole.
    let mm = Arc::new(small());
    mm.mmap(A, 3 * P, rw(), fixed(), None, 0).unwrap();
    mm.cpu().write(A + P, 5).unwrap();
    assert_eq!(mm.mmap(A + P, 600 * P, rw(), fixed(), None, 0), Err(Errno::Enomem));
    let v = mm.vmas();
    assert_eq!(v.iter().map(|v| (v.start, v.end)).collect::<Vec<_>>(), vec![(A, A + P), (A + P, A + 3 * P)]);
    assert_eq!(mm.cpu().read(A + P), Ok(5), "the pages stay");
    let sh = MapFlags::SHARED | MapFlags::ANONYMOUS | MapFlags::FIXED;
    assert_eq!(mm.mmap(A + P, 600 * P, rw(), sh, None, 0), Err(Errno::Enomem));
    assert!(
        mm.query(A + P).is_none() && mm.query(A).is_some(),
        "a hole where the shared mapping was refused"
    );
}

#[test]
fn a_moving_shrink_of_a_charged_vma_is_charged_its_size_change() {
    // Linux 6.18 charges `vrm->delta` even when the move shrinks (probed
    // with two 15 GiB mappings moved to one page): refused, after the
    // tail was unmapped.
    let mm = small();
    mm.mmap(A, 300 * P, rw(), fixed(), None, 0).unwrap();
    mm.mmap(A + 300 * P, 300 * P, rw(), fixed(), None, 0).unwrap();
    assert_eq!(mm.map_count(), 1);
    let dst = A + 0x100_0000;
    let f = rcuvm::uapi::MREMAP_MAYMOVE | rcuvm::uapi::MREMAP_FIXED;
    assert_eq!(mm.mremap(A, 600 * P, P, f, dst), Err(Errno::Enomem));
    assert_eq!(mm.query(A).map(|v| v.end), Some(A + P), "shrunk before the charge, as in Linux");
    assert_eq!(mm.mremap(A, P, P, f, dst), Ok(dst));
}

#[test]
fn stack_growth_is_charged() {
    // acct_stack_growth(): a growth larger than memory is refused (host:
    // a touch 40 GiB below a stack with no RLIMIT_STACK is SIGSEGV).
    let mm = Arc::new(small());
    let top = 0x7000_0000u64;
    mm.mmap(top, 16 * P, rw(), fixed() | MapFlags::GROWSDOWN, None, 0).unwrap();
    let mut cpu = mm.cpu();
    assert_eq!(cpu.write(top - 768 * P, 1), Err(rcuvm::AccessError::MapErr));
    assert_eq!(mm.query(top).unwrap().start, top);
    assert_eq!(cpu.write(top - 16 * P, 1), Ok(()));
    assert_eq!(mm.query(top).unwrap().start, top - 16 * P);
}

/// mlock.rs L5: population runs under the mmap read lock, after the call,
/// so under `mmap-lock` another thread's faults go on while a large
/// `MAP_POPULATE` fills its pages (Linux's `mm_populate()` runs after
/// `mmap_write_unlock()`). Before L5 the write lock was held throughout,
/// and no fault could start and end inside the call.
#[test]
fn faults_go_on_while_a_map_populate_fills_its_pages() {
    const PAGES: u64 = 1 << 16; // 256 MiB: 100-200 ms to populate
    let mm = Arc::new(
        AddressSpace::builder()
            .strategy(Strategy::MmapLock)
            .phys(Arc::new(PhysMem::new(PAGES as usize + (1 << 14))))
            .build(),
    );
    let other = mm.mmap(0, 4096 * P, rw(), MapFlags::PRIVATE | MapFlags::ANONYMOUS, None, 0).unwrap();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let faulter = {
        let (mm, stop) = (mm.clone(), stop.clone());
        std::thread::spawn(move || {
            // Each first touch is a fault, which under mmap-lock takes the
            // mmap read lock; returns (start, end) of each.
            let mut cpu = mm.cpu();
            let mut done = Vec::new();
            for i in 0..4096 {
                if stop.load(std::sync::atomic::Ordering::Relaxed) {
                    break;
                }
                let t = std::time::Instant::now();
                cpu.write(other + i * P, 1).unwrap();
                done.push((t, std::time::Instant::now()));
                std::thread::sleep(std::time::Duration::from_micros(200));
            }
            done
        })
    };
    std::thread::sleep(std::time::Duration::from_millis(5));
    let t0 = std::time::Instant::now();
    let a =
        mm.mmap(0, PAGES * P, rw(), MapFlags::PRIVATE | MapFlags::ANONYMOUS | MapFlags::POPULATE, None, 0);
    let t1 = std::time::Instant::now();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let done = faulter.join().unwrap();
    let a = a.unwrap();
    assert_eq!(present(&mm, a, PAGES * P), PAGES, "every page populated");
    let margin = std::time::Duration::from_millis(2);
    let inside = done.iter().filter(|&&(s, e)| s > t0 + margin && e + margin < t1).count();
    assert!(
        inside > 0,
        "no fault started and ended inside the {:?} MAP_POPULATE ({} faults in all)",
        t1 - t0,
        done.len()
    );
}
