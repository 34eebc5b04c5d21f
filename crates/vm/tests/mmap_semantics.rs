//! `mmap`/`munmap` paths the kernel differential test cannot reach from its
//! arena: placement, hints, files, limits, and every errno path.

use std::sync::Arc;

use rcuvm::{AddressSpace, Backing, Errno, FileId, MapFile, MapFlags, MmConfig, PAGE_SIZE, Prot, VmFlags};

const P: u64 = PAGE_SIZE;
fn anon() -> MapFlags {
    MapFlags::PRIVATE | MapFlags::ANONYMOUS
}
fn rw() -> Prot {
    Prot::READ | Prot::WRITE
}

#[test]
fn null_hint_places_top_down_below_mmap_base_and_merges() {
    let mm = AddressSpace::new();
    let base = mm.config().mmap_base;
    let a = mm.mmap(0, 3 * P, rw(), anon(), None, 0).unwrap();
    assert_eq!(a, base - 3 * P);
    let b = mm.mmap(0, P, rw(), anon(), None, 0).unwrap();
    assert_eq!(b, a - P);
    // Same flags, contiguous: one VMA, as Linux merges them.
    assert_eq!(mm.map_count(), 1);
    let v = mm.query(b).unwrap();
    assert_eq!((v.start, v.end, v.pgoff), (b, base, b / P));
    assert!(v.flags.contains(VmFlags::ACCOUNT));
    // A different protection does not merge.
    let c = mm.mmap(0, P, Prot::READ, anon(), None, 0).unwrap();
    assert_eq!(c, b - P);
    assert_eq!(mm.map_count(), 2);
}

#[test]
fn a_free_hint_is_used_and_a_taken_one_is_not() {
    let mm = AddressSpace::new();
    assert_eq!(mm.mmap(0x4000_0000, P, rw(), anon(), None, 0), Ok(0x4000_0000));
    // Taken: placed elsewhere (top-down), not over it.
    let b = mm.mmap(0x4000_0000, P, rw(), anon(), None, 0).unwrap();
    assert_ne!(b, 0x4000_0000);
    // Unaligned hints are rounded down; hints below mmap_min_addr go up to it.
    assert_eq!(mm.mmap(0x5000_0123, P, rw(), anon(), None, 0), Ok(0x5000_0000));
    assert_eq!(mm.mmap(0x1000, P, Prot::READ, anon(), None, 0), Ok(mm.config().mmap_min_addr));
}

#[test]
fn fixed_replaces_and_fixed_noreplace_refuses() {
    let mm = AddressSpace::new();
    let a = mm.mmap(0x1000_0000, 4 * P, rw(), anon() | MapFlags::FIXED, None, 0).unwrap();
    assert_eq!(
        mm.mmap(a + P, P, Prot::READ, anon() | MapFlags::FIXED_NOREPLACE, None, 0),
        Err(Errno::Eexist)
    );
    assert_eq!(mm.map_count(), 1);
    assert_eq!(mm.mmap(a + P, P, Prot::READ, anon() | MapFlags::FIXED, None, 0), Ok(a + P));
    assert_eq!(mm.map_count(), 3);
    assert!(mm.maps().contains(" r--p "));
}

#[test]
fn errno_paths_leave_the_address_space_unchanged() {
    let mm = AddressSpace::new();
    mm.mmap(0x1000_0000, 2 * P, rw(), anon() | MapFlags::FIXED, None, 0).unwrap();
    let before = mm.maps();
    let fixed = anon() | MapFlags::FIXED;
    let task = mm.config().task_size;
    let cases: Vec<(Result<u64, Errno>, Errno)> = vec![
        (mm.mmap(0, 0, rw(), anon(), None, 0), Errno::Einval),
        (mm.mmap(0x1000_0001, P, rw(), fixed, None, 0), Errno::Einval),
        (mm.mmap(0, P, rw(), MapFlags::ANONYMOUS, None, 0), Errno::Einval),
        (mm.mmap(0, P, rw(), anon(), None, 123), Errno::Einval),
        (mm.mmap(0, u64::MAX - 10, rw(), anon(), None, 0), Errno::Enomem),
        (mm.mmap(0, task + P, rw(), anon(), None, 0), Errno::Enomem),
        (mm.mmap(task - P, 2 * P, rw(), fixed, None, 0), Errno::Enomem),
        (mm.munmap(0x1000_0001, P).map(|()| 0), Errno::Einval),
        (mm.munmap(0x1000_0000, 0).map(|()| 0), Errno::Einval),
        (mm.munmap(task, P).map(|()| 0), Errno::Einval),
        (mm.munmap(task - P, 2 * P).map(|()| 0), Errno::Einval),
    ];
    for (i, (got, want)) in cases.into_iter().enumerate() {
        assert_eq!(got, Err(want), "case {i}");
    }
    assert_eq!(mm.maps(), before);
    // Unmapping nothing succeeds.
    assert_eq!(mm.munmap(0x7000_0000, P), Ok(()));
}

#[test]
fn file_mappings_check_the_open_mode_and_keep_offsets() {
    let mm = AddressSpace::new();
    let id = FileId { dev_major: 0xfe, dev_minor: 0, inode: 42, path: Arc::from("/lib/x.so") };
    let ro = MapFile { id: id.clone(), readable: true, writable: false };
    let wo = MapFile { id: id.clone(), readable: false, writable: true };
    let shared = MapFlags::SHARED;
    assert_eq!(mm.mmap(0, P, rw(), shared, Some(&ro), 0), Err(Errno::Eacces));
    assert_eq!(mm.mmap(0, P, Prot::READ, MapFlags::PRIVATE, Some(&wo), 0), Err(Errno::Eacces));
    let a = mm
        .mmap(0x2000_0000, 2 * P, Prot::READ, MapFlags::PRIVATE | MapFlags::FIXED, Some(&ro), 4 * P)
        .unwrap();
    // Contiguous file offsets merge; others do not.
    mm.mmap(a + 2 * P, P, Prot::READ, MapFlags::PRIVATE | MapFlags::FIXED, Some(&ro), 6 * P).unwrap();
    mm.mmap(a + 3 * P, P, Prot::READ, MapFlags::PRIVATE | MapFlags::FIXED, Some(&ro), 0).unwrap();
    assert_eq!(mm.map_count(), 2);
    let v = mm.query(a).unwrap();
    assert_eq!((v.end, v.pgoff), (a + 3 * P, 4));
    assert!(matches!(v.backing, Backing::File(_)));
    // A read-only shared mapping loses VM_MAYWRITE and VM_SHARED, keeps MAYSHARE.
    let s = mm.mmap(0, P, Prot::READ, shared, Some(&ro), 0).unwrap();
    let f = mm.query(s).unwrap().flags;
    assert!(f.contains(VmFlags::MAYSHARE) && !f.intersects(VmFlags::MAYWRITE | VmFlags::SHARED));
    assert!(mm.maps().contains(&format!("{s:x}-{:x} r--s 00000000 fe:00 42", s + P)));
}

#[test]
fn shared_anonymous_mappings_are_dev_zero_files_that_never_merge() {
    let mm = AddressSpace::new();
    let a = mm.mmap(0, P, rw(), MapFlags::SHARED | MapFlags::ANONYMOUS, None, 0).unwrap();
    let b = mm.mmap(0, P, rw(), MapFlags::SHARED | MapFlags::ANONYMOUS, None, 0).unwrap();
    assert_eq!(b, a - P);
    assert_eq!(mm.map_count(), 2);
    assert!(mm.maps().lines().all(|l| l.contains(" rw-s ") && l.ends_with("/dev/zero (deleted)")));
}

#[test]
fn punching_a_hole_respects_max_map_count() {
    let mut cfg = MmConfig::default();
    cfg.max_map_count = 2;
    let mm = AddressSpace::with_config(cfg);
    let a = mm.mmap(0x1000_0000, 8 * P, rw(), anon() | MapFlags::FIXED, None, 0).unwrap();
    mm.mmap(0x2000_0000, P, rw(), anon() | MapFlags::FIXED, None, 0).unwrap();
    let before = mm.maps();
    assert_eq!(mm.munmap(a + P, P), Err(Errno::Enomem));
    assert_eq!(mm.maps(), before);
    // Trimming an end does not add a VMA.
    assert_eq!(mm.munmap(a, P), Ok(()));
    assert_eq!(mm.map_count(), 2);
}

#[test]
fn placement_keeps_the_guard_gap_below_a_stack() {
    let mm = AddressSpace::new();
    let base = mm.config().mmap_base;
    let stack = base - 16 * P;
    mm.mmap(stack, 16 * P, rw(), anon() | MapFlags::FIXED | MapFlags::GROWSDOWN, None, 0).unwrap();
    let a = mm.mmap(0, P, rw(), anon(), None, 0).unwrap();
    assert!(a + P <= stack - mm.config().stack_guard_gap, "{a:#x} is inside the stack guard gap");
}

#[test]
fn mprotect_errno_paths() {
    let mm = AddressSpace::new();
    let a = mm.mmap(0x1000_0000, 4 * P, rw(), anon() | MapFlags::FIXED, None, 0).unwrap();
    let before = mm.maps();
    assert_eq!(mm.mprotect(a + 1, P, Prot::READ), Err(Errno::Einval));
    assert_eq!(mm.mprotect(a, P, Prot::GROWSDOWN | Prot::GROWSUP), Err(Errno::Einval));
    assert_eq!(mm.mprotect(a, P, Prot::from_bits_retain(0x40)), Err(Errno::Einval));
    assert_eq!(mm.mprotect(a, u64::MAX - P, Prot::READ), Err(Errno::Enomem));
    assert_eq!(mm.mprotect(0x3000_0000, P, Prot::READ), Err(Errno::Enomem));
    // Not a growsdown VMA; x86-64 has no growsup VMAs.
    assert_eq!(mm.mprotect(a, P, Prot::READ | Prot::GROWSDOWN), Err(Errno::Einval));
    assert_eq!(mm.mprotect(a, P, Prot::READ | Prot::GROWSUP), Err(Errno::Einval));
    assert_eq!(mm.mprotect(a, 0, Prot::READ), Ok(()));
    assert_eq!(mm.maps(), before);
}

#[test]
fn mprotect_refuses_rights_the_file_was_not_opened_with() {
    let mm = AddressSpace::new();
    let id = FileId { dev_major: 8, dev_minor: 1, inode: 7, path: Arc::from("/data/f") };
    let ro = MapFile { id, readable: true, writable: false };
    let a = mm.mmap(0, 2 * P, Prot::READ, MapFlags::SHARED, Some(&ro), 0).unwrap();
    assert_eq!(mm.mprotect(a, P, rw()), Err(Errno::Eacces));
    assert_eq!(mm.mprotect(a, P, Prot::READ | Prot::EXEC), Ok(()));
    assert_eq!(mm.map_count(), 2);
}

#[test]
fn mprotect_stops_at_a_hole_after_changing_what_precedes_it() {
    let mm = AddressSpace::new();
    let a = mm.mmap(0x1000_0000, 2 * P, rw(), anon() | MapFlags::FIXED, None, 0).unwrap();
    mm.mmap(a + 3 * P, P, rw(), anon() | MapFlags::FIXED, None, 0).unwrap();
    assert_eq!(mm.mprotect(a, 4 * P, Prot::READ), Err(Errno::Enomem));
    assert_eq!(mm.query(a).unwrap().flags & VmFlags::WRITE, VmFlags::empty());
    assert!(mm.query(a + 3 * P).unwrap().flags.contains(VmFlags::WRITE));
}

#[test]
fn mprotect_growsdown_extends_to_the_vma_start() {
    let mm = AddressSpace::new();
    let s =
        mm.mmap(0x1000_0000, 4 * P, rw(), anon() | MapFlags::FIXED | MapFlags::GROWSDOWN, None, 0).unwrap();
    assert_eq!(mm.mprotect(s + 2 * P, P, Prot::READ | Prot::GROWSDOWN), Ok(()));
    let v = mm.query(s).unwrap();
    assert_eq!((v.start, v.end), (s, s + 3 * P));
    assert!(!v.flags.contains(VmFlags::WRITE));
}

#[test]
fn madvise_errno_paths_and_holes() {
    use rcuvm::uapi::madv;
    let mm = AddressSpace::new();
    let a = mm.mmap(0x1000_0000, 2 * P, rw(), anon() | MapFlags::FIXED, None, 0).unwrap();
    mm.mmap(a + 3 * P, P, rw(), anon() | MapFlags::FIXED, None, 0).unwrap();
    let before = mm.maps();
    assert_eq!(mm.madvise(a, P, 5), Err(Errno::Einval));
    assert_eq!(mm.madvise(a + 1, P, madv::NORMAL), Err(Errno::Einval));
    assert_eq!(mm.madvise(a, u64::MAX, madv::NORMAL), Err(Errno::Einval));
    assert_eq!(mm.madvise(a, 0, madv::DONTFORK), Ok(()));
    assert_eq!(mm.madvise(0x7000_0000, P, madv::DONTFORK), Err(Errno::Enomem));
    // Advices rcuvm does not model say so (Linux never answers ENOSYS).
    assert_eq!(mm.madvise(a, P, madv::COLLAPSE), Err(Errno::Enosys));
    assert_eq!(mm.madvise(a, P, madv::WILLNEED), Ok(()));
    assert_eq!(mm.maps(), before);
    // A hole: both sides are advised, then ENOMEM.
    assert_eq!(mm.madvise(a, 4 * P, madv::DONTDUMP), Err(Errno::Enomem));
    assert!(mm.query(a).unwrap().flags.contains(VmFlags::DONTDUMP));
    assert!(mm.query(a + 3 * P).unwrap().flags.contains(VmFlags::DONTDUMP));
    // WIPEONFORK is for private anonymous memory only.
    let s = mm.mmap(0, P, rw(), MapFlags::SHARED | MapFlags::ANONYMOUS, None, 0).unwrap();
    assert_eq!(mm.madvise(s, P, madv::WIPEONFORK), Err(Errno::Einval));
    assert_eq!(mm.madvise(s, P, madv::FREE), Err(Errno::Einval));
    // Advising part of a VMA splits it; undoing it merges it back.
    assert_eq!(mm.madvise(a, P, madv::DODUMP), Ok(()));
    assert_eq!(mm.map_count(), 4);
    assert_eq!(mm.madvise(a, P, madv::DONTDUMP), Ok(()));
    assert_eq!(mm.map_count(), 3);
}

#[test]
fn brk_grows_shrinks_and_is_named_heap() {
    let mm = AddressSpace::new();
    // Before the loader sets the heap start, brk refuses everything.
    assert_eq!(mm.brk(0x60_0000), 0);
    mm.set_start_brk(0x55_0000).unwrap();
    assert_eq!(mm.brk(0), 0x55_0000);
    // PAGE_ALIGN rounds up: any byte past start_brk maps a page.
    assert_eq!(mm.brk(0x55_0100), 0x55_0100);
    assert_eq!(mm.map_count(), 1);
    assert_eq!(mm.brk(0x55_0800), 0x55_0800); // same page: nothing to map
    assert_eq!(mm.brk(0x55_3000), 0x55_3000);
    assert_eq!(mm.brk(0x55_8123), 0x55_8123); // extends the same VMA
    assert_eq!(mm.map_count(), 1);
    let v = mm.query(0x55_0000).unwrap();
    assert_eq!((v.start, v.end, v.name.as_deref()), (0x55_0000, 0x55_9000, Some("[heap]")));
    assert!(v.flags.contains(VmFlags::ACCOUNT | VmFlags::WRITE));
    assert!(mm.maps().ends_with("[heap]\n"));
    // Below the start: refused, nothing changes.
    assert_eq!(mm.brk(0x54_0000), 0x55_8123);
    // Shrink.
    assert_eq!(mm.brk(0x55_2000), 0x55_2000);
    assert_eq!(mm.query(0x55_0000).unwrap().end, 0x55_2000);
    // Growing into the page below another mapping is refused.
    mm.mmap(0x56_0000, P, rw(), anon() | MapFlags::FIXED, None, 0).unwrap();
    assert_eq!(mm.brk(0x56_0000), 0x55_2000);
    assert_eq!(mm.brk(0x55_f000), 0x55_f000);
    // An anonymous mapping next to the heap merges with it and is shown as heap,
    // as in Linux (the name is derived from brk, not stored).
    mm.mmap(0x55_f000, P, rw(), anon() | MapFlags::FIXED, None, 0).unwrap();
    assert_eq!(mm.query(0x55_f000).unwrap().name.as_deref(), Some("[heap]"));
}

#[test]
fn mremap_shrinks_grows_moves_and_refuses() {
    use rcuvm::uapi::{MREMAP_DONTUNMAP, MREMAP_FIXED, MREMAP_MAYMOVE};
    let mm = AddressSpace::new();
    let a = mm.mmap(0x1000_0000, 4 * P, rw(), anon() | MapFlags::FIXED, None, 0).unwrap();
    // Parameter errors first.
    assert_eq!(mm.mremap(a, P, P, 0x8, 0), Err(Errno::Einval));
    assert_eq!(mm.mremap(a, P, P, MREMAP_FIXED, 0), Err(Errno::Einval));
    assert_eq!(mm.mremap(a, P, 2 * P, MREMAP_MAYMOVE | MREMAP_DONTUNMAP, 0), Err(Errno::Einval));
    assert_eq!(mm.mremap(a + 1, P, P, 0, 0), Err(Errno::Einval));
    assert_eq!(mm.mremap(a, P, 0, 0, 0), Err(Errno::Einval));
    assert_eq!(mm.mremap(a, P, P, MREMAP_FIXED | MREMAP_MAYMOVE, a), Err(Errno::Einval)); // overlap
    assert_eq!(mm.mremap(0x7000_0000, P, 2 * P, 0, 0), Err(Errno::Efault));
    // Shrink, then grow back in place (the same VMA).
    assert_eq!(mm.mremap(a, 4 * P, 2 * P, 0, 0), Ok(a));
    assert_eq!(mm.query(a).unwrap().end, a + 2 * P);
    assert_eq!(mm.mremap(a, 2 * P, 6 * P, 0, 0), Ok(a));
    assert_eq!((mm.query(a).unwrap().end, mm.map_count()), (a + 6 * P, 1));
    // Blocked in place: ENOMEM without MAYMOVE, a move with it.
    mm.mmap(a + 6 * P, P, Prot::READ, anon() | MapFlags::FIXED, None, 0).unwrap();
    assert_eq!(mm.mremap(a, 6 * P, 8 * P, 0, 0), Err(Errno::Enomem));
    let b = mm.mremap(a, 6 * P, 8 * P, MREMAP_MAYMOVE, 0).unwrap();
    assert_ne!(b, a);
    assert!(mm.query(a).is_none());
    let v = mm.query(b).unwrap();
    assert_eq!((v.start, v.end), (b, b + 8 * P));
    // Resizing across two VMAs is refused (a different protection, so the
    // second does not merge into the first).
    mm.mmap(b + 8 * P, P, Prot::READ, anon() | MapFlags::FIXED, None, 0).unwrap();
    assert_eq!(mm.mremap(b, 9 * P, 10 * P, MREMAP_MAYMOVE, 0), Err(Errno::Efault));
    // A fixed move to a chosen place, replacing what was there.
    let c = 0x3000_0000;
    mm.mmap(c, P, Prot::READ, anon() | MapFlags::FIXED, None, 0).unwrap();
    assert_eq!(mm.mremap(b, 2 * P, 2 * P, MREMAP_FIXED | MREMAP_MAYMOVE, c), Ok(c));
    assert_eq!(mm.query(c).unwrap().end, c + 2 * P);
    assert!(mm.query(c).unwrap().flags.contains(VmFlags::WRITE));
}

#[test]
fn mmap_without_room_is_enomem() {
    // A small address space: [mmap_min_addr, TASK_SIZE) = [64 KiB, 1 MiB).
    let mut cfg = MmConfig::default();
    (cfg.task_size, cfg.mmap_base) = (0x10_0000, 0x10_0000);
    let mm = AddressSpace::with_config(cfg);
    mm.mmap(0x8_0000, P, rw(), anon() | MapFlags::FIXED, None, 0).unwrap();
    let before = mm.maps();
    // No hole of 512 KiB is left on either side of the page at 512 KiB.
    assert_eq!(mm.mmap(0, 0x8_0000, rw(), anon(), None, 0), Err(Errno::Enomem));
    assert_eq!(mm.maps(), before);
    // A smaller one fits, top-down from mmap_base.
    assert_eq!(mm.mmap(0, 0x4_0000, rw(), anon(), None, 0), Ok(0xc_0000));
}

/// mmap.rs P6, with the addresses this machine's Linux 6.18 gave the same
/// calls below the same kind of neighbour (a C program, `setarch -R`):
/// 2 MiB below a mapping at an unaligned address lands on the boundary
/// under the padded gap's start; an aligned padded gap gives one
/// boundary up; other lengths and shared memory are placed as usual.
#[test]
fn whole_huge_pages_of_anonymous_memory_land_on_huge_page_boundaries() {
    const M: u64 = 2 << 20;
    let mm = AddressSpace::new();
    // The neighbours above, from an unaligned address (libc's bss, there)
    // up to mmap_base (libc and ld.so, there).
    let base = mm.config().mmap_base;
    let top = 0x7fff_f7dd_1000;
    assert_eq!(mm.mmap(top, base - top, Prot::READ, anon() | MapFlags::FIXED, None, 0), Ok(top));
    let stack = anon() | MapFlags::STACK;
    let b = mm.mmap(0, M, rw(), anon(), None, 0).unwrap();
    assert_eq!(b, 0x7fff_f7a0_0000, "padded gap [top - 4 MiB, top): its first boundary");
    let c = mm.mmap(0, M, rw(), stack, None, 0).unwrap();
    assert_eq!(c, 0x7fff_f780_0000, "padded gap starts on a boundary: one up");
    let d = mm.mmap(0, M + P, rw(), anon(), None, 0).unwrap();
    assert_eq!(d, c - M - P, "not a whole number of huge pages: no alignment");
    let e = mm.mmap(0, M, rw(), MapFlags::SHARED | MapFlags::ANONYMOUS, None, 0).unwrap();
    assert_eq!(e, d - M, "shared anonymous memory: no alignment (shmem_enabled=never)");
    let f = mm.mmap(0, 2 * M, rw(), anon() | MapFlags::NORESERVE, None, 0).unwrap();
    assert_eq!(f, 0x7fff_f6e0_0000);
    // A hint is kept when free, aligned or not.
    assert_eq!(mm.mmap(0x5000_1000, M, rw(), anon(), None, 0), Ok(0x5000_1000));
    // MAP_STACK's VM_NOHUGEPAGE (P4).
    assert!(mm.query(c).unwrap().flags.contains(VmFlags::NOHUGEPAGE));
    assert!(top > b);
    // An mremap move of private anonymous memory to a whole number of
    // huge pages is aligned too.
    let g = mm.mmap(0x6000_0000, P, rw(), anon() | MapFlags::FIXED, None, 0).unwrap();
    let moved = mm.mremap(g, P, M, rcuvm::uapi::MREMAP_MAYMOVE, 0).unwrap();
    assert_eq!(moved % M, 0, "{moved:#x}");
}

/// mmap.rs P5 for files: offsets past MAX_LFS_FILESIZE, MAP_SHARED_VALIDATE
/// with flags outside LEGACY_MAP_MASK, MAP_HUGETLB and MAP_GROWSDOWN (the
/// host kernel's answers for an ext4 file; nothing is mapped).
#[test]
fn file_mappings_refuse_what_linux_refuses() {
    let mm = AddressSpace::new();
    let id = FileId { dev_major: 0xfe, dev_minor: 0, inode: 7, path: Arc::from("/tmp/f") };
    let f = MapFile { id, readable: true, writable: true };
    let fixed = MapFlags::FIXED;
    let at = 0x3000_0000;
    let map = |flags: MapFlags, off: u64| mm.mmap(at, P, Prot::READ, flags | fixed, Some(&f), off);
    for off in [0x7fff_ffff_ffff_f000, 0x8000_0000_0000_0000, 0xffff_ffff_ffff_f000] {
        assert_eq!(map(MapFlags::PRIVATE, off), Err(Errno::Eoverflow), "{off:#x}");
    }
    assert_eq!(map(MapFlags::PRIVATE, 0x7fff_ffff_fffe_0000), Ok(at), "the last offset that fits");
    mm.munmap(at, P).unwrap();
    let validate = MapFlags::SHARED_VALIDATE;
    assert_eq!(map(validate | MapFlags::FIXED_NOREPLACE, 0), Err(Errno::Eopnotsupp));
    assert_eq!(map(validate | MapFlags::SYNC, 0), Err(Errno::Eopnotsupp));
    assert_eq!(map(validate | MapFlags::HUGETLB, 0), Err(Errno::Einval));
    assert_eq!(map(MapFlags::PRIVATE | MapFlags::GROWSDOWN, 0), Err(Errno::Einval));
    assert_eq!(map(MapFlags::from_bits_retain(0x0b), 0), Err(Errno::Einval), "map type 0xb");
    assert_eq!(mm.map_count(), 0);
    // Legacy MAP_SHARED ignores what it does not know; a known extra flag
    // under MAP_SHARED_VALIDATE is accepted.
    assert_eq!(map(MapFlags::SHARED | MapFlags::FIXED_NOREPLACE, 0), Ok(at));
    mm.munmap(at, P).unwrap();
    assert_eq!(map(validate | MapFlags::POPULATE, 0), Ok(at));
}

/// brk.rs K2 and `vma_is_initial_heap` (mm.rs), as the host kernel did for
/// the same sequences.
#[test]
fn brk_grows_the_vma_linux_would_and_heap_is_strict() {
    let sb = 0x5555_5600_0000;
    // A VMA that straddles start_brk and ends at the break is grown.
    let mm = AddressSpace::new();
    mm.set_start_brk(sb).unwrap();
    assert_eq!(mm.brk(sb + P), sb + P);
    mm.munmap(sb, P).unwrap();
    let below = MapFlags::FIXED_NOREPLACE | anon();
    assert_eq!(mm.mmap(sb - P, 2 * P, rw(), below, None, 0), Ok(sb - P));
    assert_eq!(mm.brk(sb + 2 * P), sb + 2 * P);
    assert_eq!(mm.map_count(), 1);
    assert_eq!((mm.query(sb).unwrap().start, mm.query(sb).unwrap().end), (sb - P, sb + 2 * P));
    // A VMA moved (by mremap) to the break keeps its old pgoff: a new heap
    // VMA is made beside it.
    let mm = Arc::new(AddressSpace::new());
    mm.set_start_brk(sb).unwrap();
    assert_eq!(mm.brk(sb + P), sb + P);
    mm.munmap(sb, P).unwrap();
    let far = mm.mmap(sb + 0x10_0000, P, rw(), anon() | MapFlags::FIXED, None, 0).unwrap();
    // Written first, so the move keeps its pgoff (an unfaulted anonymous
    // VMA would take the new address's, `copy_vma`).
    mm.cpu().write(far, 1).unwrap();
    let moved = rcuvm::uapi::MREMAP_MAYMOVE | rcuvm::uapi::MREMAP_FIXED;
    assert_eq!(mm.mremap(far, P, P, moved, sb), Ok(sb));
    assert_eq!(mm.brk(sb + 2 * P), sb + 2 * P);
    assert_eq!(mm.map_count(), 2);
    // With no heap (brk == start_brk), a mapping that ends at start_brk
    // is not [heap]; one that starts at the break is not either.
    let mm = AddressSpace::new();
    mm.set_start_brk(sb).unwrap();
    mm.mmap(sb - P, P, rw(), anon() | MapFlags::FIXED, None, 0).unwrap();
    mm.mmap(sb + 4 * P, P, Prot::READ, anon() | MapFlags::FIXED, None, 0).unwrap();
    assert!(!mm.maps().contains("[heap]"), "{}", mm.maps());
}

/// mmap.rs P8: `MAP_32BIT`, with the addresses this machine's Linux 6.18
/// gave the same six calls with randomisation off (a C program under
/// `setarch -R`).
#[test]
fn map_32bit_places_bottom_up_below_2_gib() {
    let mm = AddressSpace::new();
    let low = anon() | MapFlags::BIT32;
    let got = [
        mm.mmap(0, P, rw(), low, None, 0),
        mm.mmap(0, P, Prot::READ, low, None, 0),
        mm.mmap(0, 2 << 20, rw(), low, None, 0),
        mm.mmap(0x5000_0000, P, rw(), low, None, 0),
        mm.mmap(0x9000_0000, P, rw(), low, None, 0),
        mm.mmap(0, 4 << 20, rw(), low, None, 0),
    ];
    let linux = [0x4000_0000, 0x4000_1000, 0x4020_0000, 0x5000_0000, 0x4000_2000, 0x4060_0000];
    assert_eq!(got, linux.map(Ok));
    // The window is 1 GiB: a larger mapping does not fit.
    assert_eq!(mm.mmap(0, 1 << 30, rw(), low, None, 0), Err(Errno::Enomem));
}

/// Tunables the page tables cannot keep are refused when the address
/// space is built (a task_size past 2^48 made two addresses share a page).
#[test]
fn unkeepable_tunables_are_refused_at_build() {
    let build = |f: &dyn Fn(&mut MmConfig)| {
        let mut c = MmConfig::default();
        f(&mut c);
        AddressSpace::builder().config(c).try_build().map(|_| ())
    };
    assert_eq!(build(&|_| {}), Ok(()));
    assert_eq!(build(&|c| c.task_size = 1 << 48), Ok(()));
    for (bad, what) in [
        (&(|c: &mut MmConfig| c.task_size = 1 << 56) as &dyn Fn(&mut MmConfig), "task_size"),
        (&|c: &mut MmConfig| c.task_size = 0x7fff_ffff_f001, "page-aligned"),
        (&|c: &mut MmConfig| c.mmap_base = 0, "mmap_base"),
        (&|c: &mut MmConfig| c.mmap_base = 1 << 50, "mmap_base"),
    ] {
        let e = build(bad).unwrap_err();
        assert!(e.contains(what), "{e}");
    }
}

#[test]
fn set_start_brk_refuses_what_would_orphan_or_misplace_the_heap() {
    let mm = AddressSpace::new();
    assert_eq!(mm.set_start_brk(0x55_0001), Err(Errno::Einval), "unaligned");
    assert_eq!(mm.set_start_brk(0x1000), Err(Errno::Einval), "below mmap_min_addr");
    assert_eq!(mm.set_start_brk(mm.config().task_size), Err(Errno::Einval), "past task_size");
    assert_eq!(mm.brk_range(), (0, 0), "refusals change nothing");
    mm.set_start_brk(0x55_0000).unwrap();
    mm.set_start_brk(0x56_0000).unwrap(); // the heap is still empty: allowed
    assert_eq!(mm.brk(0x56_2000), 0x56_2000);
    assert_eq!(mm.set_start_brk(0x60_0000), Err(Errno::Einval), "the heap has grown");
    assert_eq!(mm.brk_range(), (0x56_0000, 0x56_2000));
}
