//! Fuzzes the mm front end with arbitrary arguments: no call panics, and
//! after every call the address space's invariants hold (mm.rs A1: VMAs
//! sorted, non-overlapping, page-aligned, inside `TASK_SIZE`; `maps()`
//! parses back to the same ranges; `map_count` agrees), and accesses at
//! arbitrary addresses return a result, never a panic (cpu.rs C3). A
//! `fork` may come between calls: the rest run in the child.
//!
//! `mremap` arguments whose `addr + old_len` overflows are drawn by the
//! second test: they once panicked in debug builds (minimal case: with a
//! VMA at 0x4000_0000, `mremap(0x4000_0000, 0xffff_ffff_ffff_f000,
//! 0x4000_0000, 0, _)` took the shrink path and overflowed in
//! `munmap_range`); the shrink now uses munmap's checks (mremap.rs R8).

use std::sync::Arc;

use proptest::prelude::*;
use rcuvm::{AddressSpace, MapFlags, PAGE_SIZE, Prot};

#[derive(Clone, Debug)]
enum Call {
    Mmap(u64, u64, u32, u32, u64),
    Munmap(u64, u64),
    Mprotect(u64, u64, u32),
    Mremap(u64, u64, u64, u32, u64),
    Madvise(u64, u64, i32),
    Brk(u64),
    Access(u64, bool),
    /// Continue in a `fork` of the address space, the parent dropped.
    Fork,
}

/// Addresses and lengths: near a small arena (where calls interact), page
/// multiples, and anything at all.
fn num() -> impl Strategy<Value = u64> {
    prop_oneof![
        (0u64..32).prop_map(|p| 0x4000_0000 + p * PAGE_SIZE),
        (0u64..8).prop_map(|p| p * PAGE_SIZE),
        Just(0x7fff_ffff_f000u64),
        (0u64..4096).prop_map(|x| u64::MAX - x),
        (1u64..16).prop_map(|p| 0u64.wrapping_sub(p * PAGE_SIZE)),
        any::<u64>(),
    ]
}

fn call(mremap_overflow: bool) -> impl Strategy<Value = Call> {
    prop_oneof![
        (num(), num(), any::<u32>(), any::<u32>(), num())
            .prop_map(|(a, l, p, f, o)| Call::Mmap(a, l, p, f, o)),
        (num(), num(), 0u32..8, prop_oneof![Just(0x22u32), Just(0x32), Just(0x100022)], Just(0u64))
            .prop_map(|(a, l, p, f, o)| Call::Mmap(a, l, p, f, o)),
        (num(), num()).prop_map(|(a, l)| Call::Munmap(a, l)),
        (num(), num(), any::<u32>()).prop_map(|(a, l, p)| Call::Mprotect(a, l, p)),
        (num(), num(), num(), 0u32..8, num())
            .prop_filter("addr + old_len overflows (known mremap.rs bug)", move |(a, l, ..)| {
                mremap_overflow || a.checked_add(*l).is_some()
            })
            .prop_map(|(a, o, n, f, d)| Call::Mremap(a, o, n, f, d)),
        (num(), num(), prop_oneof![0i32..30, any::<i32>()]).prop_map(|(a, l, v)| Call::Madvise(a, l, v)),
        num().prop_map(Call::Brk),
        (num(), any::<bool>()).prop_map(|(a, w)| Call::Access(a, w)),
        Just(Call::Fork),
    ]
}

/// A1 and the maps round trip, after every call.
fn check(mm: &AddressSpace) {
    let task = mm.config().task_size;
    let v = mm.vmas();
    for x in &v {
        assert!(x.start < x.end && x.start % PAGE_SIZE == 0 && x.end % PAGE_SIZE == 0, "bad VMA {x}");
        assert!(x.end <= task, "VMA {x} past TASK_SIZE");
    }
    for w in v.windows(2) {
        assert!(w[0].end <= w[1].start, "{} overlaps or precedes {}", w[1], w[0]);
    }
    assert_eq!(mm.map_count(), v.len());
    let parsed = rcuvm::maps::parse(&mm.maps(), "fuzz").expect("maps parses");
    let ranges = |v: &[_]| -> Vec<(u64, u64)> { v.iter().map(|x: &rcuvm::Vma| (x.start, x.end)).collect() };
    let vs: Vec<rcuvm::Vma> = v.iter().map(|x| (**x).clone()).collect();
    assert_eq!(ranges(&parsed), ranges(&vs));
}

/// Frames of the fuzzed address spaces' memory: 64 MiB. Why: an arbitrary
/// `MAP_POPULATE`, `mlock` or `MADV_POPULATE_WRITE` faults in as much as
/// the overcommit check lets through, which is the `PhysMem`'s capacity
/// (mmap.rs P10); with the default 16 GiB one, and the page tables on top
/// (fault.rs FL10), a case once took 24 GB of this 24 GB machine and the
/// kernel killed the test.
const FRAMES: usize = 1 << 14;

fn run(strategy: usize, calls: &[Call]) {
    let mut mm = Arc::new(
        AddressSpace::builder()
            .strategy(rcuvm::Strategy::ALL[strategy % 4])
            .phys(Arc::new(rcuvm::PhysMem::new(FRAMES)))
            .build(),
    );
    let mut cpu = mm.cpu();
    for c in calls {
        match *c {
            Call::Mmap(a, l, p, f, o) => {
                let _ = mm.mmap(a, l, Prot::from_bits_retain(p), MapFlags::from_bits_retain(f), None, o);
            }
            Call::Munmap(a, l) => {
                let _ = mm.munmap(a, l);
            }
            Call::Mprotect(a, l, p) => {
                let _ = mm.mprotect(a, l, Prot::from_bits_retain(p));
            }
            Call::Mremap(a, o, n, f, d) => {
                let _ = mm.mremap(a, o, n, f, d);
            }
            Call::Madvise(a, l, v) => {
                let _ = mm.madvise(a, l, v);
            }
            Call::Brk(a) => {
                let _ = mm.brk(a);
            }
            Call::Access(a, w) => {
                let _ = if w { cpu.write(a, 1).map(|_| 0) } else { cpu.read(a) };
            }
            Call::Fork => {
                let child = Arc::new(mm.fork());
                assert!(child.map_count() <= mm.map_count(), "only MADV_DONTFORK VMAs are left out");
                cpu = child.cpu();
                mm = child;
            }
        }
        check(&mm);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1024, ..ProptestConfig::default() })]

    #[test]
    fn mm_calls_with_arbitrary_arguments(strategy in 0usize..4, calls in prop::collection::vec(call(false), 1..40)) {
        run(strategy, &calls);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Regression: `mremap` once computed `addr + old_len` unchecked.
    #[test]
    fn mremap_with_overflowing_lengths(strategy in 0usize..4, calls in prop::collection::vec(call(true), 1..40)) {
        run(strategy, &calls);
    }
}
