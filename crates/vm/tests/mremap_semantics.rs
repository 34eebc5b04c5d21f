//! `mremap` beyond what `mmap_semantics.rs` covers: every `EINVAL` of the
//! parameters, moves across several VMAs (Linux 6.17+, mremap.rs R3) and
//! `MREMAP_DONTUNMAP` (R4), each as the host kernel (6.18) behaved when
//! probed.

use rcuvm::uapi::{MREMAP_DONTUNMAP, MREMAP_FIXED, MREMAP_MAYMOVE};
use rcuvm::{AddressSpace, Errno, MapFlags, PAGE_SIZE, Prot, VmFlags};

const P: u64 = PAGE_SIZE;
const A: u64 = 0x1000_0000;
const MOVE: u32 = MREMAP_FIXED | MREMAP_MAYMOVE;

fn fixed() -> MapFlags {
    MapFlags::PRIVATE | MapFlags::ANONYMOUS | MapFlags::FIXED
}
fn rw() -> Prot {
    Prot::READ | Prot::WRITE
}
/// `(start, end, prot bits)` of every VMA, offsets from `A`.
fn layout(mm: &AddressSpace) -> Vec<(u64, u64, u64)> {
    mm.vmas().iter().map(|v| ((v.start - A) / P, (v.end - A) / P, v.flags.bits() & 7)).collect()
}

#[test]
fn mremap_parameter_errno_paths() {
    let mm = AddressSpace::new();
    mm.mmap(A, 4 * P, rw(), fixed(), None, 0).unwrap();
    let before = mm.maps();
    let task = mm.config().task_size;
    let cases = [
        // Unknown flag; FIXED or DONTUNMAP without MAYMOVE; DONTUNMAP resizing.
        (mm.mremap(A, P, P, 8, 0), Errno::Einval),
        (mm.mremap(A, P, P, MREMAP_FIXED, A + 8 * P), Errno::Einval),
        (mm.mremap(A, P, P, MREMAP_DONTUNMAP, A + 8 * P), Errno::Einval),
        (mm.mremap(A, P, 2 * P, MREMAP_DONTUNMAP | MREMAP_MAYMOVE, A + 8 * P), Errno::Einval),
        // Unaligned source, zero new length.
        (mm.mremap(A + 1, P, P, 0, 0), Errno::Einval),
        (mm.mremap(A, P, 0, MREMAP_MAYMOVE, 0), Errno::Einval),
        // Destination unaligned, past TASK_SIZE, too long, overlapping.
        (mm.mremap(A, P, P, MOVE, A + 8 * P + 1), Errno::Einval),
        (mm.mremap(A, P, P, MOVE, task), Errno::Einval),
        (mm.mremap(A, P, task + P, MOVE, 0x10_0000), Errno::Einval),
        (mm.mremap(A, 2 * P, 2 * P, MOVE, A + P), Errno::Einval),
        (mm.mremap(A + P, 2 * P, 2 * P, MOVE | MREMAP_DONTUNMAP, A), Errno::Einval),
        // No VMA at the source.
        (mm.mremap(0x7000_0000, P, 2 * P, MREMAP_MAYMOVE, 0), Errno::Efault),
        (mm.mremap(0x7000_0000, P, P, MOVE, A + 8 * P), Errno::Efault),
        (mm.mremap(0x7000_0000, P, P, MREMAP_DONTUNMAP | MREMAP_MAYMOVE, 0), Errno::Efault),
        // Growing a range that runs past its VMA.
        (mm.mremap(A, 5 * P, 6 * P, MREMAP_MAYMOVE, 0), Errno::Efault),
        // A new length past TASK_SIZE, whatever the flags, before the lookup.
        (mm.mremap(A, P, task + P, MREMAP_MAYMOVE, 0), Errno::Einval),
        (mm.mremap(0x7000_0000, P, task + P, 0, 0), Errno::Einval),
        // Shrinking with a tail past TASK_SIZE (munmap's check).
        (mm.mremap(A, u64::MAX - 2 * P, P, 0, 0), Errno::Einval),
        (mm.mremap(A, task, P, 0, 0), Errno::Einval),
        // old_len 0 "duplicates" only shared mappings.
        (mm.mremap(A, 0, P, MREMAP_MAYMOVE, 0), Errno::Einval),
        (mm.mremap(A, 0, P, MOVE, A + 8 * P), Errno::Einval),
    ];
    for (i, (got, want)) in cases.into_iter().enumerate() {
        assert_eq!(got, Err(want), "case {i}");
    }
    assert_eq!(mm.maps(), before);
    // Growing in place into a mapped page without MAYMOVE.
    mm.mmap(A + 4 * P, P, Prot::READ, fixed(), None, 0).unwrap();
    assert_eq!(mm.mremap(A, 4 * P, 5 * P, 0, 0), Err(Errno::Enomem));
    // A shrink may name a tail past its VMA: all of it is unmapped.
    assert_eq!(mm.mremap(A, 8 * P, P, 0, 0), Ok(A));
    assert_eq!(layout(&mm), vec![(0, 1, 3)]);
    // old_len 0 on a shared mapping makes a second mapping of it.
    let s = mm.mmap(0, 2 * P, rw(), MapFlags::SHARED | MapFlags::ANONYMOUS, None, 0).unwrap();
    let d = mm.mremap(s, 0, P, MREMAP_MAYMOVE, 0).unwrap();
    assert_ne!(d, s);
    assert_eq!(mm.query(d).unwrap().backing, mm.query(s).unwrap().backing);
    assert_eq!(mm.query(s).unwrap().end, s + 2 * P);
}

#[test]
fn extreme_arguments_never_panic() {
    // Every call with lengths and addresses at the edges of u64 and
    // TASK_SIZE returns an answer (no overflow panics), and the address
    // space stays well formed.
    let mm = AddressSpace::new();
    let task = mm.config().task_size;
    let vals = [0, 1, P - 1, P, A, task - P, task, task + P, 1 << 63, u64::MAX - P + 1, u64::MAX];
    for &a in &vals {
        for &l in &vals {
            mm.mmap(A, 8 * P, rw(), fixed(), None, 0).unwrap();
            let _ = mm.mmap(a, l, rw(), fixed(), None, 0);
            let _ = mm.mmap(a, l, rw(), MapFlags::PRIVATE | MapFlags::ANONYMOUS, None, 0);
            let _ = mm.mprotect(a, l, Prot::READ);
            let _ = mm.madvise(a, l, rcuvm::uapi::madv::DONTDUMP);
            let _ = mm.mlock(a, l);
            let _ = mm.mlock2(a, l, 1);
            let _ = mm.munlock(a, l);
            let _ = mm.munmap(a, l);
            for &n in &vals[..6] {
                for flags in 0..8 {
                    mm.mmap(A, 8 * P, rw(), fixed(), None, 0).unwrap();
                    let _ = mm.mremap(a, l, n, flags, a ^ n);
                    let _ = mm.mremap(A, l, n, flags, A + 16 * P);
                }
            }
        }
    }
    let vmas = mm.vmas();
    assert!(vmas.windows(2).all(|w| w[0].end <= w[1].start));
    assert!(vmas.iter().all(|v| v.start < v.end && v.end <= task && v.start % P == 0 && v.end % P == 0));
}

#[test]
fn a_fixed_move_without_resizing_takes_several_vmas_and_keeps_their_gaps() {
    // As probed on the host: [0,2) none, [2,4) r, [4,5) none, hole, [6,64) none.
    let mm = AddressSpace::new();
    mm.mmap(A, 64 * P, Prot::empty(), fixed(), None, 0).unwrap();
    mm.mprotect(A + 2 * P, 2 * P, Prot::READ).unwrap();
    mm.munmap(A + 5 * P, P).unwrap();
    // Move [1, 7) to 20: parts land at 20, 21, 23 and (after the hole) 25;
    // the destination's own gap at 24 is not unmapped, so it merges.
    assert_eq!(mm.mremap(A + P, 6 * P, 6 * P, MOVE, A + 20 * P), Ok(A + 20 * P));
    assert_eq!(layout(&mm), vec![(0, 1, 0), (7, 21, 0), (21, 23, 1), (23, 64, 0)]);
    // A start in a hole: EFAULT, nothing moved.
    let before = mm.maps();
    assert_eq!(mm.mremap(A + 2 * P, 2 * P, 2 * P, MOVE, A + 40 * P), Err(Errno::Efault));
    assert_eq!(mm.maps(), before);
    // A range ending in a hole is fine.
    assert_eq!(mm.mremap(A, 3 * P, 3 * P, MOVE, A + 40 * P), Ok(A + 40 * P));
    assert_eq!(mm.query(A), None);
    // Resizing across VMAs is still refused.
    assert_eq!(mm.mremap(A + 20 * P, 3 * P, 4 * P, MOVE, A + 50 * P), Err(Errno::Efault));
}

#[test]
fn dontunmap_keeps_the_source_and_unlocks_all_of_its_vma_in_place() {
    let mm = AddressSpace::new();
    mm.mmap(A, 64 * P, Prot::empty(), fixed(), None, 0).unwrap();
    // Locked PROT_NONE: locked, then population fails (ENOMEM), as on 6.18.
    assert_eq!(mm.mlock(A + 30 * P, 4 * P), Err(Errno::Enomem));
    assert_eq!(mm.map_count(), 3);
    // DONTUNMAP half of the locked VMA: the destination is locked, the whole
    // source VMA [30, 34) loses VM_LOCKED and does not merge with the
    // identical VMAs beside it.
    assert_eq!(mm.mremap(A + 30 * P, 2 * P, 2 * P, MOVE | MREMAP_DONTUNMAP, A + 40 * P), Ok(A + 40 * P));
    assert_eq!(layout(&mm), vec![(0, 30, 0), (30, 34, 0), (34, 40, 0), (40, 42, 0), (42, 64, 0)]);
    assert!(mm.vmas().iter().all(|v| v.flags.contains(VmFlags::LOCKED) == (v.start == A + 40 * P)));
    // Growing [34, 36) in place merges it with nothing before it (R7), even
    // though [30, 34) is now compatible with it.
    mm.munmap(A + 36 * P, 4 * P).unwrap();
    assert_eq!(mm.mremap(A + 34 * P, 2 * P, 4 * P, 0, 0), Ok(A + 34 * P));
    assert_eq!(layout(&mm), vec![(0, 30, 0), (30, 34, 0), (34, 38, 0), (40, 42, 0), (42, 64, 0)]);
}

#[test]
fn dontunmap_of_a_whole_vma_drops_its_anon_vma() {
    let mm = AddressSpace::new();
    mm.mmap(A, 16 * P, rw(), fixed(), None, 0).unwrap();
    assert_eq!(mm.mlock(A + 8 * P, 2 * P), Ok(()));
    let av = mm.query(A + 8 * P).unwrap().anon_vma;
    assert!(av.is_some());
    let to = A + 30 * P;
    assert_eq!(mm.mremap(A + 8 * P, 2 * P, 2 * P, MOVE | MREMAP_DONTUNMAP, to), Ok(to));
    let (src, dst) = (mm.query(A + 8 * P).unwrap(), mm.query(to).unwrap());
    assert_eq!((src.start, src.end, src.anon_vma), (A + 8 * P, A + 10 * P, None));
    assert!(!src.flags.contains(VmFlags::LOCKED) && src.flags.contains(VmFlags::ACCOUNT));
    assert_eq!(dst.anon_vma, av);
    assert!(dst.flags.contains(VmFlags::LOCKED));
    // Without MREMAP_FIXED the destination is a hint, used when free.
    let hint = A + 40 * P;
    assert_eq!(mm.mremap(A, P, P, MREMAP_MAYMOVE | MREMAP_DONTUNMAP, hint), Ok(hint));
    assert!(mm.query(A).is_some());
}

/// A source range that wraps past 2^64 or runs past TASK_SIZE: the host
/// kernel's answers (a C program, Linux 6.18), and no overflow (these
/// tests build with overflow checks).
#[test]
fn a_source_that_wraps_is_efault() {
    let mm = AddressSpace::new();
    let top = 0xffff_ffff_ffff_f000;
    assert_eq!(mm.mremap(top, 8192, 4096, 0, 0), Err(Errno::Efault));
    assert_eq!(mm.mremap(top, 8192, 16384, MREMAP_MAYMOVE, 0), Err(Errno::Efault));
    assert_eq!(mm.mremap(top, u64::MAX, 4096, MREMAP_MAYMOVE, 0), Err(Errno::Efault));
    let fixed = MREMAP_MAYMOVE | MREMAP_FIXED;
    assert_eq!(mm.mremap(top, 8192, 8192, fixed, 0x1000_0000), Err(Errno::Efault));
    assert_eq!(mm.mremap(top, 8192, 4096, fixed, 0x1000_0000), Err(Errno::Efault));
    // With a VMA there: a shrink's tail past TASK_SIZE is EINVAL (its
    // munmap), a growth past the VMA EFAULT.
    let a = 0x7f00_0000_0000;
    mm.mmap(a, 2 * P, Prot::READ, MapFlags::PRIVATE | MapFlags::ANONYMOUS | MapFlags::FIXED, None, 0)
        .unwrap();
    assert_eq!(mm.mremap(a, 0x8000_0000_0000, P, 0, 0), Err(Errno::Einval));
    assert_eq!(mm.mremap(a, 0x1000_0000_0000, P, 0, 0), Err(Errno::Einval));
    assert_eq!(mm.mremap(a, 0xffff_ffff_ffff_f000, P, 0, 0), Err(Errno::Einval));
    assert_eq!(mm.mremap(a, 0x1000_0000_0000, 0x2000_0000_0000, MREMAP_MAYMOVE, 0), Err(Errno::Efault));
    assert_eq!(mm.map_count(), 1);
}
