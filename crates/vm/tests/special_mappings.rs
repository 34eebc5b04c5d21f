//! The kernel's special mappings in a snapshot carry the flags Linux gives
//! them, which decide two errno paths no `mmap` can reach: `mremap` cannot
//! grow a `VM_DONTEXPAND`/`VM_PFNMAP` VMA (`EFAULT`), and `mlock` leaves
//! `VM_SPECIAL` VMAs alone (no error, no change).

use rcuvm::uapi::MREMAP_MAYMOVE;
use rcuvm::{AddressSpace, Errno, VmFlags};

const SNAPSHOT: &str = "\
7f3c5ba6a000-7f3c5ba6e000 r--p 00000000 00:00 0                          [vvar]
7f3c5ba6e000-7f3c5ba70000 r--p 00000000 00:00 0                          [vvar_vclock]
7f3c5ba70000-7f3c5ba72000 r-xp 00000000 00:00 0                          [vdso]
";

#[test]
fn growing_the_vdso_or_vvar_is_efault() {
    let mm = AddressSpace::from_maps(SNAPSHOT, "snapshot").unwrap();
    let vdso = 0x7f3c5ba70000;
    assert_eq!(mm.mremap(vdso, 0x2000, 0x3000, MREMAP_MAYMOVE, 0), Err(Errno::Efault));
    assert_eq!(mm.mremap(0x7f3c5ba6a000, 0x4000, 0x8000, MREMAP_MAYMOVE, 0), Err(Errno::Efault));
    // Shrinking is allowed (it only unmaps the tail), as in Linux.
    assert_eq!(mm.mremap(vdso, 0x2000, 0x1000, 0, 0), Ok(vdso));
}

#[test]
fn mlock_leaves_special_mappings_alone() {
    let mm = AddressSpace::from_maps(SNAPSHOT, "snapshot").unwrap();
    let before = mm.vmas();
    mm.mlock(0x7f3c5ba6a000, 0x6000).unwrap();
    let after = mm.vmas();
    assert_eq!(before, after, "VM_SPECIAL VMAs are skipped by mlock_fixup");
    assert!(after.iter().all(|v| !v.flags.contains(VmFlags::LOCKED)));
    assert!(after[0].flags.contains(VmFlags::PFNMAP | VmFlags::IO | VmFlags::DONTEXPAND | VmFlags::DONTDUMP));
    assert!(after[2].flags.contains(VmFlags::DONTEXPAND));
}

/// `[vsyscall]` is the gate area: maps shows it, but no mm call finds it
/// (`vma_lookup` never returns it). The errnos are the host kernel's for
/// the same calls on its own `[vsyscall]` page (a C program, Linux 6.18).
#[test]
fn no_mm_call_touches_the_vsyscall_page() {
    use rcuvm::uapi::{MREMAP_FIXED, madv};
    use rcuvm::{MapFlags, Prot};
    let snap = "ffffffffff600000-ffffffffff601000 --xp 00000000 00:00 0                  [vsyscall]\n";
    let mm = AddressSpace::from_maps(snap, "snapshot").unwrap();
    let (v, p) = (0xffff_ffff_ff60_0000, 4096);
    let before = mm.maps();
    // Shown, not counted (Linux's map_count leaves the gate VMA out).
    assert!(before.contains("[vsyscall]"));
    assert_eq!(mm.map_count(), 0);
    assert_eq!(mm.mprotect(v, p, Prot::READ), Err(Errno::Enomem));
    assert_eq!(mm.madvise(v, p, madv::DONTFORK), Err(Errno::Enomem));
    assert_eq!(mm.madvise(v, p, madv::NORMAL), Err(Errno::Enomem));
    assert_eq!(mm.mlock(v, p), Err(Errno::Enomem));
    assert_eq!(mm.munlock(v, p), Err(Errno::Enomem));
    assert_eq!(mm.munmap(v, p), Err(Errno::Einval));
    assert_eq!(mm.mremap(v, p, 2 * p, MREMAP_MAYMOVE, 0), Err(Errno::Efault));
    assert_eq!(mm.mremap(v, p, p, MREMAP_MAYMOVE | MREMAP_FIXED, 0x1000_0000), Err(Errno::Efault));
    let fixed = MapFlags::PRIVATE | MapFlags::ANONYMOUS | MapFlags::FIXED;
    assert_eq!(mm.mmap(v, p, Prot::READ | Prot::WRITE, fixed, None, 0), Err(Errno::Enomem));
    assert_eq!(mm.maps(), before);
}

/// A snapshot loads into an address space of any strategy (the builder's).
#[test]
fn a_snapshot_loads_with_the_builders_strategy() {
    for s in rcuvm::Strategy::ALL {
        let mm = AddressSpace::builder().strategy(s).build_from_maps(SNAPSHOT, "snapshot").unwrap();
        assert_eq!(mm.strategy(), s);
        assert_eq!(mm.maps(), SNAPSHOT);
    }
}
