//! At teardown every VMA, tree node, table page, frame chunk and RCU
//! callback of an address space is freed: a counting allocator sees the
//! live heap come back to where it was, under every strategy.
//!
//! Its own test binary (the allocator counts the whole process) with a
//! single test.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::Arc;
use std::sync::atomic::{AtomicIsize, Ordering};

use rcuvm::uapi::{MREMAP_MAYMOVE, madv};
use rcuvm::{AddressSpace, MapFlags, Prot, Strategy};

struct Counting;
static LIVE: AtomicIsize = AtomicIsize::new(0);

// SAFETY: forwards to the system allocator unchanged; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        LIVE.fetch_add(l.size() as isize, Ordering::Relaxed);
        // SAFETY: the caller's contract is `System`'s.
        unsafe { System.alloc(l) }
    }
    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        LIVE.fetch_add(l.size() as isize, Ordering::Relaxed);
        // SAFETY: as above.
        unsafe { System.alloc_zeroed(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        LIVE.fetch_sub(l.size() as isize, Ordering::Relaxed);
        // SAFETY: as above.
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        LIVE.fetch_add(new as isize - l.size() as isize, Ordering::Relaxed);
        // SAFETY: as above.
        unsafe { System.realloc(p, l, new) }
    }
}

#[global_allocator]
static A: Counting = Counting;

const P: u64 = 4096;
const RW: Prot = Prot::READ.union(Prot::WRITE);
const ANON: MapFlags = MapFlags::PRIVATE.union(MapFlags::ANONYMOUS);

/// A busy life: faults on two CPUs, splits, merges, moves, zaps, unmaps
/// that free tables, readers.
fn life(s: Strategy) {
    let mm = Arc::new(AddressSpace::with_strategy(s));
    let worker = {
        let mm = mm.clone();
        std::thread::spawn(move || {
            let mut cpu = mm.cpu();
            let a = mm.mmap(0x30_0000_0000, 256 * P, RW, ANON | MapFlags::FIXED, None, 0).unwrap();
            for i in 0..256 {
                cpu.write(a + i * P, i).unwrap();
            }
            a
        })
    };
    let a = worker.join().unwrap();
    let mut cpu = mm.cpu();
    mm.mprotect(a + 8 * P, 8 * P, Prot::READ).unwrap();
    mm.madvise(a + 32 * P, 16 * P, madv::DONTNEED).unwrap();
    let b = mm.mremap(a + 64 * P, 64 * P, 128 * P, MREMAP_MAYMOVE, 0).unwrap();
    cpu.write(b + 127 * P, 1).unwrap();
    mm.munmap(a, 16 * P).unwrap();
    for _ in 0..100 {
        let x = mm.mmap(0, 4 * P, RW, ANON, None, 0).unwrap();
        cpu.write(x, 2).unwrap();
        mm.munmap(x, 4 * P).unwrap();
    }
    assert!(!mm.maps().is_empty() && !mm.smaps().is_empty());
}

#[test]
fn everything_is_freed_at_teardown() {
    // Warm up what the process keeps once (thread-local registries, the
    // fence-mode probe), then measure each strategy's whole life.
    std::thread::spawn(|| life(Strategy::VmaLock)).join().unwrap();
    for s in Strategy::ALL {
        let before = LIVE.load(Ordering::SeqCst);
        std::thread::spawn(move || life(s)).join().unwrap();
        let after = LIVE.load(Ordering::SeqCst);
        assert_eq!(after - before, 0, "{s}: {} bytes still allocated after teardown", after - before);
    }
}
