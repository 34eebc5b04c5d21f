//! `mlock`, `mlock2`, `munlock`, `mlockall`, `munlockall`: every errno
//! path, splitting and merging, `def_flags`, and what population does to
//! VMAs (mlock.rs L1–L4). The kernel-differential test checks the same
//! calls against the host kernel inside its arena; these cover what it
//! cannot reach (`mlockall` would lock the test process).

use rcuvm::uapi::{MCL_CURRENT, MCL_FUTURE, MCL_ONFAULT, MLOCK_ONFAULT, madv};
use rcuvm::{AddressSpace, Errno, MapFlags, Prot, VmFlags};

#[path = "common/mm.rs"]
mod common_mm;
use common_mm::{A, P, fixed, rw};
fn flags(mm: &AddressSpace, addr: u64) -> VmFlags {
    mm.query(addr).unwrap().flags
}
fn locked(mm: &AddressSpace, addr: u64) -> bool {
    flags(mm, addr).contains(VmFlags::LOCKED)
}

#[test]
fn mlock_errno_paths() {
    let mm = AddressSpace::new();
    mm.mmap(A, 4 * P, rw(), fixed(), None, 0).unwrap();
    let before = mm.maps();
    // A range that wraps: EINVAL before any VMA is looked at.
    assert_eq!(mm.mlock(A, u64::MAX - 2 * P), Err(Errno::Einval));
    assert_eq!(mm.munlock(A, u64::MAX - 2 * P), Err(Errno::Einval));
    // Unknown mlock2 flags.
    assert_eq!(mm.mlock2(A, P, 2), Err(Errno::Einval));
    assert_eq!(mm.mlock2(A, P, !MLOCK_ONFAULT), Err(Errno::Einval));
    // Nothing mapped at the start: ENOMEM.
    assert_eq!(mm.mlock(0x7000_0000, P), Err(Errno::Enomem));
    assert_eq!(mm.munlock(0x7000_0000, P), Err(Errno::Enomem));
    assert_eq!(mm.maps(), before);
    // Empty ranges succeed, even unmapped; so does a length that rounds
    // up past the end of the address space to zero (the kernel's size_t).
    assert_eq!(mm.mlock(0x7000_0000, 0), Ok(()));
    assert_eq!(mm.mlock(0x7000_0000, u64::MAX), Ok(()));
    assert_eq!(mm.munlock(0x7000_0000, 0), Ok(()));
    assert_eq!(mm.maps(), before);
}

#[test]
fn a_hole_stops_mlock_after_locking_what_precedes_it() {
    let mm = AddressSpace::new();
    mm.mmap(A, 2 * P, rw(), fixed(), None, 0).unwrap();
    mm.mmap(A + 2 * P, 2 * P, Prot::READ, fixed(), None, 0).unwrap();
    mm.mmap(A + 5 * P, P, rw(), fixed(), None, 0).unwrap();
    assert_eq!(mm.mlock(A, 6 * P), Err(Errno::Enomem));
    assert!(locked(&mm, A) && locked(&mm, A + 2 * P));
    assert!(!locked(&mm, A + 5 * P), "past the hole");
    assert_eq!(mm.munlock(A, 6 * P), Err(Errno::Enomem));
    assert!(!locked(&mm, A) && !locked(&mm, A + 2 * P));
    // A range ending in a hole: everything mapped is locked, then ENOMEM.
    assert_eq!(mm.mlock(A + 5 * P, 2 * P), Err(Errno::Enomem));
    assert!(locked(&mm, A + 5 * P));
}

#[test]
fn mlock_rounds_the_range_to_pages_splits_and_merges_back() {
    let mm = AddressSpace::new();
    mm.mmap(A, 8 * P, rw(), fixed(), None, 0).unwrap();
    // [A + 2P + 100, A + 3P + 1) covers pages 2 and 3.
    assert_eq!(mm.mlock(A + 2 * P + 100, P - 99), Ok(()));
    assert_eq!(mm.map_count(), 3);
    let v = mm.query(A + 2 * P).unwrap();
    assert_eq!((v.start, v.end), (A + 2 * P, A + 4 * P));
    assert!(v.flags.contains(VmFlags::LOCKED) && !v.flags.contains(VmFlags::LOCKONFAULT));
    // Locking again changes nothing.
    assert_eq!(mm.mlock(A + 2 * P, 2 * P), Ok(()));
    assert_eq!(mm.map_count(), 3);
    // Unlocking merges the pieces back into one VMA: population gave the
    // locked piece an anon_vma, and the others have none, so they may merge.
    assert_eq!(mm.munlock(A, 8 * P), Ok(()));
    assert_eq!(mm.map_count(), 1);
    assert!(mm.query(A).unwrap().anon_vma.is_some());
}

#[test]
fn mlock2_onfault_sets_lockonfault_and_populates_nothing() {
    let mm = AddressSpace::new();
    mm.mmap(A, 4 * P, rw(), fixed(), None, 0).unwrap();
    mm.mmap(A + 4 * P, 2 * P, Prot::empty(), fixed(), None, 0).unwrap();
    // PROT_NONE locks without error on fault: nothing is faulted in.
    assert_eq!(mm.mlock2(A, 6 * P, MLOCK_ONFAULT), Ok(()));
    let f = flags(&mm, A);
    assert!(f.contains(VmFlags::LOCKED | VmFlags::LOCKONFAULT));
    assert!(mm.query(A).unwrap().anon_vma.is_none());
    // mlock2 without the flag (and mlock) clears VM_LOCKONFAULT.
    assert_eq!(mm.mlock2(A, P, 0), Ok(()));
    assert!(!flags(&mm, A).contains(VmFlags::LOCKONFAULT) && locked(&mm, A));
    assert!(flags(&mm, A + P).contains(VmFlags::LOCKONFAULT));
    assert_eq!(mm.munlock(A, 6 * P), Ok(()));
    assert!(!flags(&mm, A + P).intersects(VmFlags::LOCKED | VmFlags::LOCKONFAULT));
}

#[test]
fn mlock_of_prot_none_locks_then_fails_to_fault() {
    let mm = AddressSpace::new();
    mm.mmap(A, 2 * P, Prot::empty(), fixed(), None, 0).unwrap();
    mm.mmap(A + 2 * P, 2 * P, rw(), fixed(), None, 0).unwrap();
    // Linux locks both VMAs, then population stops at the inaccessible one
    // (EFAULT, returned as ENOMEM), so the writable one is not faulted in.
    assert_eq!(mm.mlock(A, 4 * P), Err(Errno::Enomem));
    assert!(locked(&mm, A) && locked(&mm, A + 2 * P));
    assert!(mm.query(A + 2 * P).unwrap().anon_vma.is_none());
    // Locking the writable one alone faults it in: it gets an anon_vma.
    assert_eq!(mm.mlock(A + 2 * P, 2 * P), Ok(()));
    assert!(mm.query(A + 2 * P).unwrap().anon_vma.is_some());
}

#[test]
fn population_reuses_a_compatible_neighbours_anon_vma() {
    let mm = AddressSpace::new();
    mm.mmap(A, 4 * P, rw(), fixed(), None, 0).unwrap();
    assert_eq!(mm.mprotect(A + 2 * P, 2 * P, Prot::READ), Ok(()));
    assert_eq!(mm.mlock(A, 4 * P), Ok(()));
    let av = mm.query(A).unwrap().anon_vma;
    assert!(av.is_some());
    // A read fault needs no anon_vma.
    assert!(mm.query(A + 2 * P).unwrap().anon_vma.is_none());
    // Becoming writable while locked populates (mprotect_fixup) and takes
    // the neighbour's anon_vma; the two then merge.
    assert_eq!(mm.mprotect(A + 2 * P, 2 * P, rw()), Ok(()));
    let v = mm.query(A).unwrap();
    assert_eq!((v.end, v.anon_vma), (A + 4 * P, av));
    // Two VMAs faulted in separately with different flags get different
    // anon_vmas, and no longer merge once their flags agree.
    let b = A + 0x10_0000;
    mm.mmap(b, 4 * P, rw(), fixed(), None, 0).unwrap();
    assert_eq!(mm.madvise(b + 2 * P, 2 * P, madv::DONTDUMP), Ok(()));
    assert_eq!(mm.mlock(b, 2 * P), Ok(()));
    assert_eq!(mm.mlock(b + 2 * P, 2 * P), Ok(()));
    assert_eq!(mm.madvise(b + 2 * P, 2 * P, madv::DODUMP), Ok(()));
    assert_ne!(mm.query(b).unwrap().anon_vma, mm.query(b + 2 * P).unwrap().anon_vma);
    assert_eq!(mm.query(b).unwrap().end, b + 2 * P);
}

#[test]
fn locked_memory_refuses_dontneed_and_mprotect_keeps_its_account() {
    let mm = AddressSpace::new();
    mm.mmap(A, 2 * P, rw(), fixed(), None, 0).unwrap();
    assert_eq!(mm.mlock(A, 2 * P), Ok(()));
    assert_eq!(mm.madvise(A, P, madv::DONTNEED), Err(Errno::Einval));
    assert_eq!(mm.madvise(A, P, madv::FREE), Err(Errno::Einval));
    assert_eq!(mm.madvise(A, P, madv::DONTNEED_LOCKED), Ok(()));
    // Faulted in (anon_vma), so dropping write keeps VM_ACCOUNT (Q3).
    assert_eq!(mm.mprotect(A, 2 * P, Prot::READ), Ok(()));
    assert!(flags(&mm, A).contains(VmFlags::ACCOUNT));
}

#[test]
fn map_locked_and_mremap_keep_vm_locked() {
    use rcuvm::uapi::{MREMAP_FIXED, MREMAP_MAYMOVE};
    let mm = AddressSpace::new();
    mm.mmap(A, 2 * P, rw(), fixed() | MapFlags::LOCKED, None, 0).unwrap();
    assert!(locked(&mm, A));
    assert!(mm.query(A).unwrap().anon_vma.is_some(), "MAP_LOCKED populates");
    assert_eq!(mm.mremap(A, 2 * P, 4 * P, 0, 0), Ok(A));
    assert!(locked(&mm, A) && mm.query(A).unwrap().end == A + 4 * P);
    let b = 0x2000_0000;
    assert_eq!(mm.mremap(A, 4 * P, 4 * P, MREMAP_FIXED | MREMAP_MAYMOVE, b), Ok(b));
    assert!(locked(&mm, b));
}

#[test]
fn mlockall_errno_paths() {
    let mm = AddressSpace::new();
    mm.mmap(A, P, rw(), fixed(), None, 0).unwrap();
    for bad in [0, MCL_ONFAULT, 8, MCL_CURRENT | 8] {
        assert_eq!(mm.mlockall(bad), Err(Errno::Einval), "flags {bad:#x}");
    }
    assert!(!locked(&mm, A));
}

#[test]
fn mlockall_current_locks_every_vma_and_munlockall_unlocks_them() {
    let mm = AddressSpace::new();
    mm.mmap(A, 2 * P, rw(), fixed(), None, 0).unwrap();
    mm.mmap(A + 4 * P, 2 * P, Prot::empty(), fixed(), None, 0).unwrap();
    // Population errors (the PROT_NONE VMA) are ignored.
    assert_eq!(mm.mlockall(MCL_CURRENT), Ok(()));
    assert!(locked(&mm, A) && locked(&mm, A + 4 * P));
    assert!(mm.query(A).unwrap().anon_vma.is_some());
    // Only current VMAs: a new mapping is not locked.
    let c = mm.mmap(0, P, rw(), MapFlags::PRIVATE | MapFlags::ANONYMOUS, None, 0).unwrap();
    assert!(!locked(&mm, c));
    assert_eq!(mm.mlockall(MCL_CURRENT | MCL_ONFAULT), Ok(()));
    assert!(flags(&mm, c).contains(VmFlags::LOCKED | VmFlags::LOCKONFAULT));
    mm.munlockall();
    assert!(mm.vmas().iter().all(|v| !v.flags.intersects(VmFlags::LOCKED | VmFlags::LOCKONFAULT)));
}

#[test]
fn mlockall_future_locks_new_mappings_and_the_heap() {
    let mm = AddressSpace::new();
    mm.mmap(A, P, rw(), fixed(), None, 0).unwrap();
    mm.set_start_brk(0x55_0000).unwrap();
    assert_eq!(mm.mlockall(MCL_FUTURE), Ok(()));
    assert!(!locked(&mm, A), "MCL_FUTURE alone leaves current VMAs");
    let b = mm.mmap(0, P, rw(), MapFlags::PRIVATE | MapFlags::ANONYMOUS, None, 0).unwrap();
    assert!(locked(&mm, b) && mm.query(b).unwrap().anon_vma.is_some());
    assert_eq!(mm.brk(0x55_2000), 0x55_2000);
    assert!(locked(&mm, 0x55_0000));
    // MCL_FUTURE | MCL_ONFAULT: future mappings lock on fault.
    assert_eq!(mm.mlockall(MCL_FUTURE | MCL_ONFAULT), Ok(()));
    let c = mm.mmap(0, P, Prot::READ, MapFlags::PRIVATE | MapFlags::ANONYMOUS, None, 0).unwrap();
    assert!(flags(&mm, c).contains(VmFlags::LOCKED | VmFlags::LOCKONFAULT));
    // Any mlockall without MCL_FUTURE, and munlockall, clear def_flags.
    assert_eq!(mm.mlockall(MCL_CURRENT), Ok(()));
    let d = mm.mmap(0x3000_0000, P, Prot::READ, fixed(), None, 0).unwrap();
    assert!(!locked(&mm, d));
    assert_eq!(mm.mlockall(MCL_FUTURE), Ok(()));
    mm.munlockall();
    let e = mm.mmap(0x3100_0000, P, Prot::READ, fixed(), None, 0).unwrap();
    assert!(!locked(&mm, e));
}
