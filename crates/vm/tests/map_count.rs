//! `vm.max_map_count` on every path that adds VMAs, with Linux's comparison
//! and errno on each (checked against the host kernel by filling a process
//! up to 65530 VMAs): `mmap` refuses once `map_count > max`; a split
//! (`split_vma()`, for `munmap` holes, `mprotect`, `madvise`, `mlock`)
//! once `map_count >= max`, and `madvise` says `EAGAIN`; `mremap` needs
//! `map_count + 2 < max - 3` for a call with a new address, checked before
//! the source, and `map_count < max - 3` for any move.

use rcuvm::uapi::{MREMAP_DONTUNMAP, MREMAP_FIXED, MREMAP_MAYMOVE, madv};
use rcuvm::{AddressSpace, Errno, MapFlags, MmConfig, PAGE_SIZE, Prot, VmFlags};

const P: u64 = PAGE_SIZE;

fn fixed() -> MapFlags {
    MapFlags::PRIVATE | MapFlags::ANONYMOUS | MapFlags::FIXED
}

/// An address space with `max_map_count = max` holding `n` one-page VMAs
/// that cannot merge (alternating protections, a page apart), the first at
/// 0x1000_0000, plus one 8-page VMA at 0x4000_0000 to split.
fn space(max: usize, n: usize) -> AddressSpace {
    let mut cfg = MmConfig::default();
    cfg.max_map_count = max;
    let mm = AddressSpace::with_config(cfg);
    for i in 0..n as u64 {
        let prot = if i % 2 == 0 { Prot::READ } else { Prot::empty() };
        mm.mmap(0x1000_0000 + 2 * i * P, P, prot, fixed(), None, 0).unwrap();
    }
    mm.mmap(BIG, 8 * P, Prot::READ | Prot::WRITE, fixed(), None, 0).unwrap();
    assert_eq!(mm.map_count(), n + 1);
    mm
}
const BIG: u64 = 0x4000_0000;

#[test]
fn mmap_refuses_only_past_the_limit() {
    let mm = space(5, 4);
    // map_count == max: still allowed (Linux checks `>`), and goes past it.
    assert_eq!(mm.mmap(0x5000_0000, P, Prot::READ, fixed(), None, 0), Ok(0x5000_0000));
    assert_eq!(mm.map_count(), 6);
    let before = mm.maps();
    assert_eq!(mm.mmap(0x6000_0000, P, Prot::READ, fixed(), None, 0), Err(Errno::Enomem));
    assert_eq!(mm.maps(), before);
}

#[test]
fn munmap_refuses_a_hole_at_the_limit() {
    let mm = space(5, 4);
    let before = mm.maps();
    assert_eq!(mm.munmap(BIG + P, P), Err(Errno::Enomem));
    assert_eq!(mm.maps(), before);
    // Trimming an edge splits nothing... and an mmap over the middle with
    // MAP_FIXED is an unmap too.
    assert_eq!(mm.mmap(BIG + P, P, Prot::READ, fixed(), None, 0), Err(Errno::Enomem));
    assert_eq!(mm.munmap(BIG, P), Ok(()));
}

#[test]
fn mprotect_splits_one_at_a_time() {
    // At the limit: the first split is refused, nothing changes.
    let mm = space(5, 4);
    let before = mm.maps();
    assert_eq!(mm.mprotect(BIG + P, P, Prot::READ), Err(Errno::Enomem));
    assert_eq!(mm.maps(), before);
    // One below: the first split is made, the second refused; Linux keeps
    // the first, so the VMA is now two with the same flags.
    let mm = space(6, 4);
    assert_eq!(mm.mprotect(BIG + P, P, Prot::READ), Err(Errno::Enomem));
    assert_eq!(mm.map_count(), 6);
    let (lo, hi) = (mm.query(BIG).unwrap(), mm.query(BIG + P).unwrap());
    assert_eq!((lo.end, hi.start, hi.end), (BIG + P, BIG + P, BIG + 8 * P));
    assert_eq!(lo.flags, hi.flags);
    // Two below: both splits fit.
    let mm = space(7, 4);
    assert_eq!(mm.mprotect(BIG + P, P, Prot::READ), Ok(()));
    assert_eq!(mm.map_count(), 7);
}

#[test]
fn a_piece_that_merges_into_its_neighbour_needs_no_room() {
    let mm = space(7, 4);
    assert_eq!(mm.mprotect(BIG + P, P, Prot::READ), Ok(()));
    assert_eq!(mm.map_count(), 7);
    // At the limit, the page after the read-only piece joins it: the VMA
    // below shrinks and the piece grows, no split (vma_merge_existing_range).
    assert_eq!(mm.mprotect(BIG + 2 * P, P, Prot::READ), Ok(()));
    assert_eq!(mm.query(BIG + P).unwrap().end, BIG + 3 * P);
    assert_eq!(mm.map_count(), 7);
    // The same for mlock and madvise.
    assert_eq!(mm.mlock(BIG + P, 2 * P), Ok(()));
    assert_eq!(mm.mlock(BIG + 3 * P, P), Err(Errno::Enomem));
    let mm = space(7, 4);
    assert_eq!(mm.madvise(BIG + P, P, madv::DONTDUMP), Ok(()));
    assert_eq!(mm.madvise(BIG + 2 * P, P, madv::DONTDUMP), Ok(()));
    assert_eq!(mm.map_count(), 7);
}

#[test]
fn madvise_says_eagain_and_mlock_enomem() {
    let mm = space(5, 4);
    let before = mm.maps();
    assert_eq!(mm.madvise(BIG + P, P, madv::DONTDUMP), Err(Errno::Eagain));
    assert_eq!(mm.mlock(BIG + P, P), Err(Errno::Enomem));
    assert_eq!(mm.munlock(BIG + P, P), Ok(()), "nothing to change, nothing to split");
    assert_eq!(mm.maps(), before);
    // One below the limit, mlock keeps its first split, as Linux does.
    let mm = space(6, 4);
    assert_eq!(mm.mlock(BIG + P, P), Err(Errno::Enomem));
    assert_eq!(mm.map_count(), 6);
    assert!(!mm.query(BIG + P).unwrap().flags.contains(VmFlags::LOCKED));
    // Locking a whole VMA needs no room.
    let mm = space(5, 4);
    assert_eq!(mm.mlock(BIG, 8 * P), Ok(()));
}

#[test]
fn mremap_with_a_new_address_needs_five_spare_slots_before_the_source_is_looked_up() {
    let fixed_move = MREMAP_FIXED | MREMAP_MAYMOVE;
    // max - 5 VMAs: refused, even for an unmapped source (ENOMEM before EFAULT).
    let mm = space(10, 4);
    assert_eq!(mm.map_count(), 5);
    let before = mm.maps();
    assert_eq!(mm.mremap(BIG, P, P, fixed_move, 0x5000_0000), Err(Errno::Enomem));
    assert_eq!(mm.mremap(0x7000_0000, P, P, fixed_move, 0x5000_0000), Err(Errno::Enomem));
    assert_eq!(mm.mremap(BIG, P, P, fixed_move | MREMAP_DONTUNMAP, 0x5000_0000), Err(Errno::Enomem));
    assert_eq!(mm.maps(), before);
    // max - 6: allowed, and an unmapped source is EFAULT.
    let mm = space(11, 4);
    assert_eq!(mm.mremap(0x7000_0000, P, P, fixed_move, 0x5000_0000), Err(Errno::Efault));
    assert_eq!(mm.mremap(BIG, P, P, fixed_move, 0x5000_0000), Ok(0x5000_0000));
}

#[test]
fn a_move_needs_three_spare_slots() {
    // MREMAP_MAYMOVE without a new address skips the check above; the
    // move itself (prep_move_vma) needs map_count < max - 3. A VMA right
    // after the one to grow forces the move.
    let blocked = |max| {
        let mm = space(max, 4);
        mm.mmap(BIG + 8 * P, P, Prot::READ, fixed(), None, 0).unwrap();
        assert_eq!(mm.map_count(), 6);
        mm
    };
    let mm = blocked(9);
    let before = mm.maps();
    assert_eq!(mm.mremap(BIG, 8 * P, 16 * P, MREMAP_MAYMOVE, 0), Err(Errno::Enomem));
    assert_eq!(mm.maps(), before);
    let mm = blocked(10);
    let to = mm.mremap(BIG, 8 * P, 16 * P, MREMAP_MAYMOVE, 0).unwrap();
    assert_ne!(to, BIG);
}
