//! Resident memory of address spaces, as an embedder that keeps many
//! (a sandbox per guest) pays it: measured from `/proc/self/statm` around
//! building them, in a test binary of its own so that no other test's
//! allocations land in the window.
//!
//! The bounds have room for allocator noise; what they catch is a whole
//! 2 MiB frame chunk written per address space (frame.rs `chunk_alloc`: it
//! was 2,283 KiB each) or eager latency histograms (rcu stats.rs: 60 KB
//! per domain, two domains each).

#![cfg(target_os = "linux")]

use std::sync::Arc;

use rcuvm::frame::PhysMem;
use rcuvm::{AddressSpace, MapFlags, Prot};

/// Resident bytes of this process.
fn rss() -> u64 {
    let s = std::fs::read_to_string("/proc/self/statm").expect("statm");
    let pages: u64 = s.split_whitespace().nth(1).expect("resident field").parse().expect("a number");
    pages * 4096
}

/// Average resident KiB that `make` adds per item over `n` items.
fn kib_each<T>(n: usize, make: impl Fn() -> T) -> (f64, Vec<T>) {
    let before = rss();
    let v: Vec<T> = (0..n).map(|_| make()).collect();
    let after = rss();
    (after.saturating_sub(before) as f64 / n as f64 / 1024.0, v)
}

#[test]
fn address_spaces_cost_kilobytes_not_megabytes() {
    const N: usize = 500;
    // Each with its own physical memory (the builder's default, 16 GiB of
    // which none is used yet): its chunk table (64 KiB) and the zero page.
    let (own, a) = kib_each(N, || AddressSpace::builder().build());
    // Sharing one machine's physical memory, as a host of many guests would.
    let phys = Arc::new(PhysMem::new(1 << 20));
    let (shared, b) = kib_each(N, || AddressSpace::builder().phys(phys.clone()).build());
    // Used a little: a mapping with one page written and read back. The
    // shared physical memory's first chunk is carved by the first of them;
    // each then costs its page, its page tables and its VMA.
    let (used, c) = kib_each(N, || {
        let mm = Arc::new(AddressSpace::builder().phys(phys.clone()).build());
        let a = mm
            .mmap(0, 1 << 20, Prot::READ | Prot::WRITE, MapFlags::PRIVATE | MapFlags::ANONYMOUS, None, 0)
            .unwrap();
        let mut cpu = mm.cpu();
        cpu.write(a, 7).unwrap();
        assert_eq!(cpu.read(a), Ok(7));
        drop(cpu);
        mm
    });
    eprintln!(
        "resident per address space: own memory {own:.0} KiB, shared {shared:.0} KiB, one page used {used:.0} KiB"
    );
    assert!(own < 256.0, "an empty address space with its own memory costs {own:.0} KiB");
    assert!(shared < 64.0, "an empty address space sharing memory costs {shared:.0} KiB");
    assert!(used < 256.0, "an address space using one page costs {used:.0} KiB");
    drop((a, b, c));
}
